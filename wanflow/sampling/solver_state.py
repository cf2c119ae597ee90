"""What a solver carries from one step to the next, and the check every step makes of its index."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from wanflow.sampling.noise import next_step_noise
from wanflow.sampling.schedule import Schedule


@dataclass(frozen=True, eq=False)
class SolverState:
    """What a multistep solver carries from one step to the next."""

    schedule: Schedule
    x0: tuple[torch.Tensor, ...] = ()  # data predictions of the previous steps, oldest first (as many as it needs)
    last_sample: torch.Tensor | None = None  # UniPC, SA-Solver: the sample the previous predictor started from
    last_order: int = 0  # UniPC: the previous predictor's order, reused by this step's corrector
    index: int | None = None  # the last step taken; None before the first
    seed: int | None = None  # the run's seed: lcm's fresh noise at each step
    noise_generator: torch.Tensor | None = None  # lcm, euler_ancestral: the noise generator's state after the last draw
    noise_tree: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # the SDE samplers' Brownian noise
    last_noise: torch.Tensor | None = None  # SA-Solver: the noise its previous predictor added (its corrector adds it)
    shift: float | None = None  # the model's shift (ComfyUI's model sampling), for samplers whose rules are in it
    # a solver's own record of its sampler call (RES4LYF's: its sigmas, noise generators, last step; ipndm's and lms's:
    # the previous derivatives)
    carry: Any = None
    # the steps this state integrates, [start, stop): ComfyUI's uni_pc picks its orders by the length of the sampler
    # call (a KSamplerAdvanced's share of the steps); start is the first step taken, stop None the schedule's end
    start: int | None = None
    stop: int | None = None
    # a step of two model calls (heun, dpm_2): where its next call is, (x, sigma), and what it keeps until then
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    partial: tuple[torch.Tensor, ...] = ()
    # the unconditional velocity of the model call this step reads (ComfyUI's CFG++ samplers: ``Solver.uncond``)
    uncond: torch.Tensor | None = None


Stepped = tuple[torch.Tensor, SolverState]  # (x_next, state)
StepFn = Callable[[SolverState, torch.Tensor, torch.Tensor, int], Stepped]


def check_index(state: SolverState, index: int) -> int:
    """``index`` if it is the schedule's and follows the state's last step (any step may start a fresh state)."""
    n = state.schedule.num_steps
    if not 0 <= index < n:
        raise ValueError(f"step index {index} is outside the schedule's {n} steps")
    if state.stop is not None and index >= state.stop:
        raise ValueError(f"step {index} is past the steps this state integrates (to step {state.stop})")
    if state.pending is not None:
        if index != state.index:
            raise ValueError(f"step {state.index} awaits its next model call, not step {index}")
        return index
    if state.index is not None and index != state.index + 1:
        raise ValueError(f"step {index} follows step {state.index}; multistep solvers take consecutive steps")
    return index


def begun(state: SolverState, index: int) -> SolverState:
    """``state`` with ``start`` set where ``index`` is its first step: a sampler call's solvers that need where their
    call began (ComfyUI's uni_pc for its orders, the SDE samplers for their noise's span) read it there."""
    return replace(state, start=index) if state.index is None else state


def fresh_noise(state: SolverState, x: torch.Tensor, sampler: str) -> tuple[torch.Tensor, SolverState]:
    """The sampler call's next fresh noise for ``x`` (ComfyUI's noise sampler's draw, ``noise.next_step_noise``) and
    the state after it; without the run's seed, an error naming ``sampler``."""
    if state.seed is None:
        raise ValueError(f"{sampler} draws fresh noise at each step: it needs the run's seed (init(schedule, seed))")
    noise, drawn = next_step_noise(tuple(x.shape[1:]), state.seed, state.noise_generator, x.device)
    return noise, replace(state, noise_generator=drawn)
