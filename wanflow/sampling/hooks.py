"""What the denoising loop (``pipelines/core.py``) tells its step hooks, and the hook interface.

Hooks are how everything around the steps joins a run without editing the loop: progress, expert prefetch, CFG
parallelism (which replaces the velocity computation), a step cache, per-step LoRA strengths. They stack: the loop
calls each in list order, and each ``wrap`` wraps the velocity function the hooks before it produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wanflow.sampling.guidance import CFG, Guidance


@dataclass(frozen=True)
class Step:
    """One step of a run, as the hooks and the progress callbacks see it."""

    index: int
    total: int
    timestep: int | float  # int on the reference grids, float with ``float_timesteps``
    expert: str
    guide_scale: float
    next_expert: str | None = None  # the expert of the following step; None after the last
    skipped: int = 0  # steps of the schedule before this run's first (video to video starts part way down it)
    guidance: Guidance = CFG  # how the step's two predictions combine (``sampling.guidance``)
    sigma: float | None = None  # the noise level the model sees (the schedule's; ComfyUI's nodes' windows read it)
    call: int = 0  # which of the run's sampler calls runs it (``pipelines.core.Call``; ComfyUI's KSamplerAdvanced)


# The velocity of one step: (model, latents, timesteps, conditioning, guidance scale) -> velocity. The conditioning
# is the loop's ``Conditioning`` (prompt and negative-prompt states, I2V channels, TI2V frame 0).
Velocity = Callable[[nn.Module, torch.Tensor, Any, Any, float], torch.Tensor]


class StepHook:
    """Base of the loop's hooks; every method is optional. ``begin`` sees the whole plan before the first step,
    ``before`` each step with its expert, ``wrap`` may wrap (or replace) the velocity computation of a step, ``after``
    sees the latents the step produced and may return latents that replace them (the hooks after it see those),
    ``finished`` ends the run after this step when it says so, and ``end`` runs once when the loop leaves, normally or
    not."""

    def begin(self, steps: Sequence[Step]) -> None:
        pass

    def before(self, step: Step, model: nn.Module) -> None:
        pass

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        return velocity

    def after(self, step: Step, latents: torch.Tensor) -> torch.Tensor | None:
        return None

    def finished(self) -> bool:
        return False

    def end(self) -> None:
        pass
