"""ComfyUI's schedulers on Wan's flow-matching sigmas, and schedules given as a list of sigmas.

A ComfyUI workflow names its steps by a scheduler (``KSampler``'s list: simple, beta, normal, ...) over the model's
sigma table, which ``ModelSamplingSD3`` (the shift node every Wan workflow carries) builds from the shift: 1000
float32 sigmas ``shift(k / 1000)``, k = 1..1000. Most schedulers pick entries of that table; karras, exponential and
kl_optimal span its two ends. Each function below gives the sigmas ComfyUI's ``calculate_sigmas`` gives for the same
name, steps and shift (tests/sampling/test_comfy_schedules.py holds ComfyUI's own outputs), in the same float32
arithmetic, and ComfyUI's rounding quirks with them: ``simple`` truncates its table index, ``beta`` drops repeated
entries (so fewer steps than asked can run), ``ddim_uniform`` never starts at sigma 1.

The DiT sees ``1000 * sigma`` as floats, as ComfyUI feeds it (``float_timesteps``). The names are ComfyUI's; the step
itself is wanflow's solver (euler, lcm, dpmpp_2m, res_multistep, uni_pc and uni_pc_bh2 are ComfyUI's samplers of the
same names; unipc and dpm++ are the reference's). For uni_pc and uni_pc_bh2, ComfyUI's KSampler lays out one step
more and drops the penultimate sigma (``comfy_schedule(..., sampler=)``).

``given_schedule`` takes the sigmas themselves (ComfyUI's custom sigma nodes, a distilled model's published steps):
decreasing from at most 1, ending at 0 (appended when left out), no shift applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from wanflow.sampling.schedule import (
    DISCARD_PENULTIMATE,
    MOVE_FIRST_SIGMA,
    NUM_TRAIN_TIMESTEPS,
    Schedule,
    discard_penultimate,
    offset_first_sigma,
)

TABLE_SIZE = 1000  # the entries of ComfyUI's flow sigma table (its timesteps), multiplier 1000


def flow_table(shift: float) -> torch.Tensor:
    """ComfyUI's ``ModelSamplingDiscreteFlow`` sigmas, float32, increasing: ``shift(t)`` at t = k / 1000, k = 1..1000,
    t computed as ComfyUI does (k / 1000 * 1000 / 1000, in float32)."""
    t = (torch.arange(1, TABLE_SIZE + 1) / TABLE_SIZE) * NUM_TRAIN_TIMESTEPS / NUM_TRAIN_TIMESTEPS
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def _sigma_of_timestep(t: torch.Tensor, shift: float) -> torch.Tensor:
    t = t / NUM_TRAIN_TIMESTEPS
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def _with_zero(sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.as_tensor(sigmas, dtype=torch.float32), torch.zeros(1)])


def simple(table: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """Evenly spaced table entries from the top, the index truncated (``int(x * 1000 / steps)``)."""
    stride = len(table) / steps
    return _with_zero([float(table[-(1 + int(x * stride))]) for x in range(steps)])


def uniform(table: torch.Tensor, steps: int, shift: float, sgm: bool = False) -> torch.Tensor:
    """``normal``: timesteps evenly spaced from the top entry's to the bottom entry's, both ends included; ``sgm``
    (``sgm_uniform``): ``steps + 1`` of them, the last left out."""
    start, end = table[-1] * NUM_TRAIN_TIMESTEPS, table[0] * NUM_TRAIN_TIMESTEPS
    timesteps = torch.linspace(start, end, steps + 1)[:-1] if sgm else torch.linspace(start, end, steps)
    return _with_zero([float(_sigma_of_timestep(t, shift)) for t in timesteps])


def ddim_uniform(table: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """Every ``1000 // steps``-th entry from the second one up, highest first (so it starts below sigma 1, and takes
    one step more where 1000 is not a multiple of ``steps`` near it)."""
    stride = max(len(table) // steps, 1)
    picked = [float(table[x]) for x in range(1, len(table), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def beta(table: torch.Tensor, steps: int, shift: float, a: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """Table entries at the Beta(0.6, 0.6) quantiles of evenly spaced levels (Lee et al. 2024), the index rounded; an
    index equal to the one before is dropped."""
    from scipy.stats import beta as beta_distribution

    levels = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(beta_distribution.ppf(levels, a, b) * (len(table) - 1))
    kept = [int(i) for k, i in enumerate(indices) if k == 0 or i != indices[k - 1]]
    return _with_zero([float(table[i]) for i in kept])


def linear_quadratic(table: torch.Tensor, steps: int, shift: float, threshold: float = 0.025) -> torch.Tensor:
    """Mochi's schedule: the first half of the steps fall linearly to ``1 - threshold``, the rest quadratically to 0
    (no shift: it scales by the table's top entry, 1)."""
    if steps == 1:
        return torch.tensor([1.0, 0.0]) * table[-1]
    linear = steps // 2
    quadratic = steps - linear
    gap = linear - threshold * steps
    a = gap / (linear * quadratic**2)
    b = threshold / linear - 2 * gap / quadratic**2
    c = a * linear**2
    done = [i * threshold / linear for i in range(linear)] + [a * i**2 + b * i + c for i in range(linear, steps)]
    return torch.tensor([1.0 - x for x in [*done, 1.0]], dtype=torch.float32) * table[-1]


def karras(table: torch.Tensor, steps: int, shift: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) between the table's ends: evenly spaced in ``sigma ** (1 / rho)``."""
    low, high = float(table[0]) ** (1 / rho), float(table[-1]) ** (1 / rho)
    return _with_zero((high + torch.linspace(0, 1, steps) * (low - high)) ** rho)


def exponential(table: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """Evenly spaced in log sigma between the table's ends."""
    return _with_zero(torch.linspace(math.log(float(table[-1])), math.log(float(table[0])), steps).exp())


def kl_optimal(table: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """Evenly spaced in ``atan(sigma)`` between the table's ends (AUTOMATIC1111 #15608)."""
    if steps < 2:
        raise ValueError("the kl_optimal scheduler needs 2 steps or more")
    w = torch.arange(steps, dtype=torch.float32).div_(steps - 1)
    return _with_zero((w * math.atan(float(table[0])) + (1 - w) * math.atan(float(table[-1]))).tan_())


def _arctangent_ramp(count: int, slope: float, pivot: int, start: float, end: float) -> list[float]:
    """``count`` levels from ``start`` down to ``end`` along an arctangent step of ``slope`` centred on index
    ``pivot``, its two ends pinned to ``start`` and ``end`` (float64)."""

    def level(i: int) -> float:
        return ((2 / math.pi) * math.atan(-slope * (i - pivot)) + 1) / 2

    top, bottom = level(0), level(count - 1)
    return [(level(i) - bottom) * (1 / (top - bottom)) * (start - end) + end for i in range(count)]


def bong_tangent(table: torch.Tensor, steps: int, shift: float, pivot: float = 0.6, slope: float = 0.2) -> torch.Tensor:
    """RES4LYF's ``bong_tangent``: two arctangent ramps, 1 to 0.5 then 0.5 to 0, meeting at 60% of ``steps + 2``
    points, each steeper the fewer the steps; the shift and the table play no part (the ramps are the sigmas)."""
    if steps < 2:
        raise ValueError("the bong_tangent scheduler needs 2 steps or more")
    points = steps + 2
    meet = int(points * pivot)
    slope = slope / (points / 40)
    first = _arctangent_ramp(meet, slope, meet, 1.0, 0.5)
    second = _arctangent_ramp(points - meet, slope, 0, 0.5, 0.0)
    return torch.tensor(first[:-1] + second, dtype=torch.float32)


SCHEDULERS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "simple": simple,
    "sgm_uniform": lambda table, steps, shift: uniform(table, steps, shift, sgm=True),
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": uniform,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
    "bong_tangent": bong_tangent,  # (RES4LYF's custom node adds these two to KSampler's list)
    "beta57": lambda table, steps, shift: beta(table, steps, shift, a=0.5, b=0.7),
}


def comfy_sigmas(name: str, steps: int, shift: float) -> torch.Tensor:
    """The float32 sigmas (ending at 0) ComfyUI's scheduler ``name`` gives for ``steps`` steps at ``shift``."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)} (ComfyUI's names)")
    return SCHEDULERS[name](flow_table(shift), steps, shift)


def comfy_schedule(
    name: str, steps: int, shift: float, float_timesteps: bool = True, sampler: str | None = None
) -> Schedule:
    """``comfy_sigmas`` as a ``Schedule``: the DiT fed ``1000 * sigma`` as floats (ComfyUI's), or truncated to
    integers (the reference's) with ``float_timesteps=False``; laid out as ComfyUI's KSampler does for ``sampler``."""
    if sampler in DISCARD_PENULTIMATE:
        return discard_penultimate(schedule_of(comfy_sigmas(name, steps + 1, shift), float_timesteps))
    return for_sampler(schedule_of(comfy_sigmas(name, steps, shift), float_timesteps), sampler, shift)


def for_sampler(schedule: Schedule, sampler: str | None, shift: float) -> Schedule:
    """``schedule`` as ComfyUI's sampler ``sampler`` walks it (on a model of shift ``shift``): its first sigma moved
    off 1 for those in log-SNR (``offset_first_sigma``), else as it is."""
    return offset_first_sigma(schedule, shift) if sampler in MOVE_FIRST_SIGMA else schedule


def scaled_noise(schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """The latents ComfyUI's KSampler starts a flow model from on an empty latent: the noise scaled by the first
    sigma (its ``noise_scaling``, ``sigma noise + (1 - sigma) 0``), which matters where a schedule starts below 1
    (``ddim_uniform``, given sigmas); a first sigma moved off 1 (``offset_first_sigma``) counts as 1."""
    sigma = 1.0 if schedule.first_moved else schedule.sigmas[0]
    return noise if sigma == 1 else noise * sigma.to(noise.device)


def parse_sigmas(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"1, 0.94, 0.83, 0.63"`` or a sequence of numbers -> a tuple of floats (checked by ``given_schedule``)."""
    if isinstance(value, str):
        try:
            return tuple(float(part) for part in value.replace(" ", ",").split(",") if part.strip())
        except ValueError:
            raise ValueError(
                f"sigmas are numbers separated by commas, such as '1,0.9375,0.8333,0.625', got {value!r}"
            ) from None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in value
    ):
        raise ValueError(f"sigmas are a list of numbers, got {value!r}")
    return tuple(float(s) for s in value)


def given_schedule(sigmas: Sequence[float], float_timesteps: bool = True) -> Schedule:
    """The schedule of a list of sigmas as given (no shift): each in [0, 1], strictly decreasing, ending at 0 (a 0 is
    appended where the list stops above it)."""
    values = list(sigmas)
    if not values or not all(math.isfinite(s) and 0 <= s <= 1 for s in values):
        raise ValueError(f"sigmas are noise levels in [0, 1] (1: pure noise, 0: the video), got {values}")
    if values[-1] != 0:
        values.append(0.0)
    return schedule_of(torch.tensor(values, dtype=torch.float32), float_timesteps)


def schedule_of(sigmas: torch.Tensor, float_timesteps: bool) -> Schedule:
    """float32 sigmas ending at 0 -> a Schedule whose DiT timesteps are ``1000 * sigma`` (float32, or truncated)."""
    if len(sigmas) < 2 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"sigmas must fall strictly from step to step down to 0 (in float32), got {sigmas.tolist()}")
    scaled = sigmas[:-1] * NUM_TRAIN_TIMESTEPS
    return Schedule(sigmas, scaled if float_timesteps else scaled.to(torch.int64))
