"""Noise schedules as data: pure functions from (steps, shift) to the sigmas the solver walks and the timesteps the
model sees.

Convention: time runs from 1 (noise) to 0 (data), ``x_sigma = (1 - sigma) x0 + sigma eps``; the DiT predicts
``v = eps - x0``. Every schedule ends at sigma = 0, so the last solver step returns the data prediction.

The reference builds its grids in numpy float64 and truncates ``sigma * 1000`` to int64; the arithmetic below keeps
the same operations in the same order so that the integer timesteps match it exactly (wan22.md §4, §8). The
step-distilled LoRAs (Wan2.2-Lightning, LightX2V) were trained on float timesteps instead (``float_timesteps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# The official FlowUniPC scheduler is built with shift 1 on the grid 1 - linspace(1, 1/1000, 1000)[::-1] in float32;
# its first sigma is float32(0.999) = 0.9990000128746033, read back as a Python float.
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))

S = TypeVar("S", float, np.ndarray, torch.Tensor)


def shift_sigmas(sigmas: S, shift: float) -> S:
    """The resolution shift ``s*sigma / (1 + (s-1)*sigma)``: keeps 0 and 1 fixed, spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class Schedule:
    """Step ``k`` goes from ``sigmas[k]`` to ``sigmas[k + 1]`` with the model at ``timesteps[k]``."""

    sigmas: torch.Tensor  # (n + 1,) float32, decreasing, sigmas[-1] == 0
    timesteps: torch.Tensor  # (n,) int64 trunc(sigma * 1000), or float32 sigma * 1000: what the DiT sees
    # sigmas[0] stands in for sigma 1: ComfyUI's samplers in log-SNR move a first sigma of 1 (log-SNR -inf there) just
    # below it (``offset_first_sigma``); the noise of their SDE ones still spans up to 1
    first_moved: bool = False

    def __post_init__(self) -> None:
        if self.sigmas.dtype != torch.float32 or self.timesteps.dtype not in (torch.int64, torch.float32):
            raise ValueError("a Schedule needs float32 sigmas and int64 or float32 timesteps")
        if self.sigmas.shape != (len(self.timesteps) + 1,) or self.sigmas[-1] != 0:
            raise ValueError("a Schedule needs one sigma per timestep plus a final sigma of 0")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def __eq__(self, other: object) -> bool:  # (the tensors' values, so that two requests compare)
        if not isinstance(other, Schedule):
            return NotImplemented
        same = self.timesteps.dtype == other.timesteps.dtype and torch.equal(self.sigmas, other.sigmas)
        return same and torch.equal(self.timesteps, other.timesteps) and self.first_moved == other.first_moved

    def __hash__(self) -> int:
        return hash((tuple(self.sigmas.tolist()), tuple(self.timesteps.tolist()), self.first_moved))


def _check(steps: int, shift: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift!r}")


def _from_sigmas(sigmas: np.ndarray, float_timesteps: bool = False) -> Schedule:
    """n float64 sigmas (without the final 0) -> Schedule, as the reference ``set_timesteps`` does it; with
    ``float_timesteps``, ``sigma * 1000`` rounded to float32 instead of truncated to int64."""
    scaled = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS)
    timesteps = scaled.to(torch.float32) if float_timesteps else scaled.to(torch.int64)  # int64: toward zero
    return Schedule(torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)), timesteps)


def unipc_schedule(steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """The official FlowUniPCMultistepScheduler grid: starts at sigma 0.999 (t = 999)."""
    _check(steps, shift)
    sigmas = np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1).copy()[:-1]
    return _from_sigmas(shift_sigmas(sigmas, float(shift)), float_timesteps)


def dpm_schedule(steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """The official DPM++ grid (``get_sampling_sigmas``): starts at sigma 1.0 (t = 1000)."""
    _check(steps, shift)
    sigmas = np.linspace(1, 0, steps + 1)[:steps]
    # The reference passes these to a scheduler built with shift 1, which applies the (identity) shift once more.
    return _from_sigmas(shift_sigmas(sigmas, float(shift)), float_timesteps)


def euler_schedule(steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """Same grid as DPM++. With ``float_timesteps`` it is the grid the step-distilled LoRAs were trained on:
    ``linspace(1, 0, N + 1)[:N]`` shifted, the DiT fed ``1000 * sigma`` as floats (N = 4, shift 5: 1000, 937.5,
    833.33, 625), as Wan2.2-Lightning's ``EulerScheduler`` and LightX2V's step-distill scheduler (whose
    ``[1000, 750, 500, 250]`` indexes the same shifted grid) condition the DiT."""
    return dpm_schedule(steps, shift, float_timesteps)


# samplers ComfyUI's KSampler lays one step more out for, dropping the penultimate sigma (it does so for dpm_2 too)
DISCARD_PENULTIMATE = ("uni_pc", "uni_pc_bh2")


def discard_penultimate(schedule: Schedule) -> Schedule:
    """``schedule`` without its sigma before the final 0 (and the last step's timestep): the steps ComfyUI's KSampler
    gives its UniPC samplers, asked for one step more, so that the last step is the longer one."""
    sigmas = torch.cat([schedule.sigmas[:-2], schedule.sigmas[-1:]])
    return Schedule(sigmas, schedule.timesteps[:-1], first_moved=schedule.first_moved)


def comfy_uni_pc_schedule(steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """The grid of ``euler`` laid out as ComfyUI's KSampler lays steps out for its UniPC samplers: one step more, the
    penultimate sigma dropped (ComfyUI's simple scheduler where N + 1 divides 1000)."""
    return discard_penultimate(euler_schedule(steps + 1, shift, float_timesteps))


# ComfyUI's samplers that step in log-SNR and move a first sigma of 1 just below it (``offset_first_sigma_for_snr``)
MOVE_FIRST_SIGMA = (
    *(
        f"{name}{gpu}"
        for name in ("dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_sde")
        for gpu in ("", "_gpu")
    ),
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
)
MOVED_PERCENT = 1e-4  # the first sigma of those samplers: the model's sigma at this fraction of its timesteps


def percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI's ``percent_to_sigma`` of a flow model (``ModelSamplingDiscreteFlow``), in float64: the sigma at
    ``percent`` of the way through its timesteps, ``shift(1 - percent)``; 1 at or below 0, 0 at or above 1."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    t = 1.0 - percent
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def offset_first_sigma(schedule: Schedule, shift: float) -> Schedule:
    """ComfyUI's ``offset_first_sigma_for_snr`` on a flow model: a first sigma of 1, where the half log-SNR
    ``log((1 - sigma) / sigma)`` is -inf, becomes the sigma at timestep percent 1e-4, ``shift(1 - 1e-4)`` (computed in
    float64, stored in float32; the DiT is fed it too); marked ``first_moved``. Other schedules are left as they
    are."""
    if schedule.sigmas[0] < 1:
        return schedule
    sigmas, timesteps = schedule.sigmas.clone(), schedule.timesteps.clone()
    sigmas[0] = percent_to_sigma(MOVED_PERCENT, shift)
    timesteps[0] = (sigmas[0] * NUM_TRAIN_TIMESTEPS).to(timesteps.dtype)
    return Schedule(sigmas, timesteps, first_moved=True)


def moved_euler_schedule(steps: int, shift: float, float_timesteps: bool = False) -> Schedule:
    """``euler_schedule`` with its first sigma moved off 1 (``offset_first_sigma``): the grid of the samplers in
    ``MOVE_FIRST_SIGMA``."""
    return offset_first_sigma(euler_schedule(steps, shift, float_timesteps), shift)
