"""diffusers' flow-matching schedulers as wanflow runs them: ``pipe.scheduler = UniPCMultistepScheduler.from_config(
pipe.scheduler.config, flow_shift=5.0)``, the line diffusers' Wan examples carry, does here what it does there.

A scheduler object is read, never imported: duck-typed by its class (or a base class) name, its ``config`` and its
``set_timesteps``. Its grid is its own: a copy is asked for ``steps`` steps and its ``sigmas`` and ``timesteps`` are
taken as they are (so a subclass or a setting that only moves the grid, such as ``shift_terminal``, is followed).
The step is wanflow's solver of the scheduler's family (``FAMILIES``), whose math is diffusers' step under the
settings ``REQUIRED`` names; any other value of those is refused (it would change the step, or leave the flow
convention ``x = (1 - sigma) x0 + sigma eps`` the solvers use). The tests give the same scheduler to diffusers'
own ``WanPipeline`` and compare the latents.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from wanflow.configs import DiffusersConfig
from wanflow.sampling.comfy_schedules import SCHEDULERS
from wanflow.sampling.schedule import Schedule

FAMILIES = {  # diffusers' class name -> wanflow's solver
    "UniPCMultistepScheduler": "unipc",
    "DPMSolverMultistepScheduler": "dpm++",
    "FlowMatchEulerDiscreteScheduler": "euler",
    "FlowMatchLCMScheduler": "lcm",
}
_FLOW = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "final_sigmas_type": "zero"}
_GRID = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_COMMON = {**_GRID, "thresholding": False, "use_dynamic_shifting": False}  # (dynamic shifting needs a mu per call)
REQUIRED: dict[str, dict[str, Any]] = {  # the settings under which diffusers' step is wanflow's solver's
    "unipc": {
        **_FLOW,
        **_COMMON,
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
    },
    "dpm++": {
        **_FLOW,
        **_COMMON,
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "use_lu_lambdas": False,
        "variance_type": None,
    },
    "euler": {**_COMMON, "stochastic_sampling": False, "invert_sigmas": False},
    "lcm": {**_COMMON, "invert_sigmas": False, "scale_factors": None},  # (no resizing between steps)
}
SHIFT_KEYS = {"unipc": "flow_shift", "dpm++": "flow_shift", "euler": "shift", "lcm": "shift"}


def reference_config(shift: float) -> dict[str, Any]:
    """The reference's sampler (FlowUniPC, the task's shift) in diffusers' scheduler config: what a diffusers folder's
    ``scheduler/scheduler_config.json`` holds and what ``pipe.scheduler.config`` reads before a scheduler is set."""
    return {
        "_class_name": "UniPCMultistepScheduler",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": shift,
        "solver_order": 2,
        "solver_type": "bh2",
        "lower_order_final": True,
        "predict_x0": True,
        "final_sigmas_type": "zero",
    }


class ReferenceScheduler:
    """``pipe.scheduler`` until one is set: the reference's grid (from sigma 0.999) and UniPC at the task's shift.
    Its ``config`` builds diffusers' own UniPC (``UniPCMultistepScheduler.from_config(pipe.scheduler.config)``),
    which walks diffusers' grid (from sigma 1), as it would in diffusers."""

    def __init__(self, shift: float):
        self.config = DiffusersConfig(reference_config(shift))

    def __repr__(self) -> str:
        return f"ReferenceScheduler(flow_shift={self.config.flow_shift}): the reference's UniPC grid"


@dataclass(frozen=True)
class SchedulerGrid:
    """The steps of one call in place of the solver's grid: a set scheduler's (its class name, wanflow's solver of its
    family), a ComfyUI scheduler's (its name, ``sampling.comfy_schedules``) or given sigmas' ("sigmas")."""

    name: str
    solver: str
    shift: float
    schedule: Schedule

    @property
    def comfy(self) -> bool:
        """Whether these are ComfyUI's steps (a scheduler of its, or given sigmas), which its KSampler starts from the
        noise scaled by their first sigma (``comfy_schedules.scaled_noise``), not a diffusers scheduler's."""
        return self.name in (*SCHEDULERS, "sigmas")

    def metadata(self) -> dict[str, object]:
        sigmas = {"sigmas": [round(float(s), 6) for s in self.schedule.sigmas]} if self.name == "sigmas" else {}
        return {"scheduler": self.name, **sigmas}


def scheduler_family(scheduler: Any) -> tuple[str, str]:
    """(diffusers' class name, wanflow's solver) of a scheduler object, or a clear error for one wanflow cannot run
    exactly."""
    name = next((c.__name__ for c in type(scheduler).__mro__ if c.__name__ in FAMILIES), None)
    if name is None or not callable(getattr(scheduler, "set_timesteps", None)):
        raise ValueError(
            f"pipe.scheduler takes one of diffusers' {sorted(FAMILIES)} (the schedulers wanflow's solvers compute), "
            f"got {type(scheduler).__name__}"
        )
    solver = FAMILIES[name]
    config = getattr(scheduler, "config", {})
    wrong = {
        key: config[key] for key, want in REQUIRED[solver].items() if key in config and _differs(config[key], want)
    }
    if wrong:
        want = {key: REQUIRED[solver][key] for key in wrong}
        raise ValueError(
            f"{name} with {wrong}: wanflow's {solver} solver computes diffusers' step with {want} (the flow-matching "
            "convention, the solver's order and its type)"
        )
    return name, solver


def _differs(value: Any, want: Any) -> bool:
    if isinstance(want, list):
        return list(value or []) != want
    return value != want


def scheduler_grid(scheduler: Any, steps: int) -> SchedulerGrid:
    """The grid ``scheduler`` walks in ``steps`` steps (from a copy: the object is not changed), with its family."""
    name, solver = scheduler_family(scheduler)
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(steps, device="cpu")
    sigmas, timesteps = torch.as_tensor(probe.sigmas).float().cpu(), torch.as_tensor(probe.timesteps).cpu()
    if timesteps.is_floating_point():
        timesteps = timesteps.float()
    if sigmas.shape != (steps + 1,) or len(timesteps) != steps or sigmas[-1] != 0:
        raise ValueError(
            f"{name} gave {len(timesteps)} timesteps and sigmas {tuple(sigmas.shape)} for {steps} steps; wanflow "
            "runs a grid of one timestep per step ending at sigma 0"
        )
    shift = float(probe.config[SHIFT_KEYS[solver]])
    return SchedulerGrid(type(scheduler).__name__, solver, shift, Schedule(sigmas, timesteps))
