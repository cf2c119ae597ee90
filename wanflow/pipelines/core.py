"""THE denoising loop, shared by every task.

Per step: pick the expert and its guidance scale from the timestep (``sampling.experts``), predict the velocity with
classifier-free guidance ``uncond + g * (cond - uncond)`` (or another rule of ``sampling.guidance``), advance one
solver state across the whole run (it continues through the expert switch; ComfyUI's samplers start afresh there, as
each expert is a sampler call of its own there; a chain of ComfyUI's calls, each with its own guidance, step noise
and steps, is a ``Call`` each),
and for TI2V with an image put the image latent back into frame 0.

Everything else a run needs around the steps is a ``StepHook`` (``sampling/hooks.py``): progress, expert prefetch,
CFG parallelism (which replaces the velocity computation), a step cache, per-step LoRA strengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from wanflow.models.dit import TokenTimesteps
from wanflow.sampling.experts import guidance_for, select_expert
from wanflow.sampling.guidance import CFG, Guidance
from wanflow.sampling.hooks import Step, StepHook, Velocity
from wanflow.sampling.schedule import Schedule
from wanflow.sampling.solver_state import SolverState
from wanflow.sampling.solvers import Solver


@dataclass
class Conditioning:
    """Everything the DiT sees besides the noisy latents; built by the task's conditioning file."""

    context: torch.Tensor  # (1, Lc, text_dim) prompt states
    context_null: torch.Tensor  # (1, Lc, text_dim) negative-prompt states
    y: torch.Tensor | None = None  # I2V: (1, 20, T, H, W) = 4 mask channels + image latent, beside the noise
    # (1, C, K, H, W) latents that replace the first K frames after every step, their tokens at t = 0: TI2V's image
    # (K = 1), or the frames a window of a long video takes from the window before it
    frame0: torch.Tensor | None = None
    context_nag: torch.Tensor | None = None  # (1, Lc, text_dim) NAG's negative states (``runtime.nag``), or None

    def positive(self) -> torch.Tensor:
        """The context of the conditional pass: the prompt's states, then NAG's negative ones where NAG is on."""
        return self.context if self.context_nag is None else torch.cat([self.context, self.context_nag])


@dataclass
class Prepared:
    """What a task's conditioning file hands to the shared loop: the noise shape and the conditioning."""

    shape: tuple[int, int, int, int]  # (C, T', H', W') of the noise
    cond: Conditioning


@dataclass(frozen=True)
class Call:
    """One of ComfyUI's sampler calls (a KSamplerAdvanced of a chain): from step ``start`` the solver starts afresh,
    drawing its step noise from ``seed`` (None: the run's seed), on ``schedule`` (None: the call before's, or the
    run's; a model of another shift lays the call's steps out at its own, ``low_noise_shift``), at guidance
    ``guide_scale`` (None: its expert's). Where a call's schedule is not the call's before it, the latents are first
    scaled out of the last call's sigma and into this one's, ``(1 - s') x / (1 - s)``, as KSampler scales a flow
    model's latents out of and into each call."""

    start: int
    seed: int | None = None
    schedule: Schedule | None = None
    guide_scale: float | None = None
    shift: float | None = None  # the model's shift from this call on (its own: low_noise_shift); None: as before


def rescale(latents: torch.Tensor, start: int, before: Schedule, after: Schedule) -> torch.Tensor:
    """``latents`` at ``before``'s sigma of step ``start``, as a call on ``after`` starts from them."""
    into, out = (1.0 - s.sigmas[start].to(latents.device) for s in (after, before))  # (float32)
    return into * (latents / out)  # (KSampler's inverse noise scaling, then its noise scaling with no noise)


def call_of(calls: Sequence[Call], index: int) -> int:
    """Which of ``calls`` (sorted by start, the first at 0) runs step ``index``."""
    return max(i for i, c in enumerate(calls) if c.start <= index)


def step_levels(schedule: Schedule, calls: Sequence[Call] = ()) -> tuple[list, list]:
    """Each step's DiT timestep and sigma: from the schedule the call that runs it walks (``_schedule``)."""
    timesteps, sigmas = schedule.timesteps.tolist(), schedule.sigmas.tolist()[:-1]
    for call in calls:
        if call.schedule is not None:
            k, own = call.start, call.schedule
            timesteps[k:], sigmas[k:] = own.timesteps.tolist()[k:], own.sigmas.tolist()[k:-1]
    return timesteps, sigmas


@dataclass(frozen=True)
class Sampler:
    """How a run integrates: the schedule, the solver, the expert boundary and the guidance, in sampler calls."""

    schedule: Schedule
    solver: Solver
    boundary_t: float | None  # the timestep of the expert switch; None for a dense model
    guide_scale: tuple[float, float] | float
    batch_cfg: bool = True  # both guidance passes in one batch
    skipped: int = 0  # steps of the full schedule before ``schedule`` (video to video: its tail)
    guidance: Guidance = CFG  # how each step's two predictions combine
    seed: int | None = None  # the run's seed (the step noise of the solvers that draw it)
    # ComfyUI's sampler calls, the first at step 0 (``Call``); none given: one call, split at the expert switch for a
    # solver that starts afresh there (each expert is a sampler call of its own in ComfyUI)
    calls: tuple[Call, ...] = ()
    shift: float | None = None  # the model's shift (sa_solver's noise interval, res_2s's smallest sigma)

    def steps(self) -> list[Step]:
        """The run's steps (``plan``'s)."""
        return self.plan()[0]

    def plan(self) -> tuple[list[Step], tuple[Call, ...]]:
        """The run's steps and the sampler calls they belong to (``Step.call`` indexes them)."""
        timesteps, sigmas = step_levels(self.schedule, self.calls)  # python numbers: no device syncs in the loop
        names = [select_expert(t, self.boundary_t) for t in timesteps]
        calls = self.calls_of(names)
        owner = [call_of(calls, i) for i in range(len(timesteps))]
        scales = [
            guidance_for(t, self.boundary_t, self.guide_scale) if calls[n].guide_scale is None else calls[n].guide_scale
            for t, n in zip(timesteps, owner, strict=True)
        ]
        steps = [
            Step(i, len(timesteps), t, names[i], scales[i], nxt, self.skipped, self.guidance, sigmas[i], owner[i])
            for i, (t, nxt) in enumerate(zip(timesteps, [*names[1:], None], strict=True))
        ]
        return steps, calls

    def calls_of(self, experts: Sequence[str]) -> tuple[Call, ...]:
        """The run's calls, given each step's expert: as given, else the one call (split at the switch, for a solver
        that starts afresh there)."""
        if self.calls:
            return self.calls
        switch = next((i for i in range(1, len(experts)) if experts[i] != experts[i - 1]), None)
        return (Call(0),) if switch is None or not self.solver.restarts_at_switch else (Call(0), Call(switch))


def known_frames(frame0: torch.Tensor) -> int:
    """How many first latent frames ``frame0`` holds: its frame axis (1 for a tensor that is only a marker)."""
    return frame0.shape[2] if frame0.ndim == 5 else 1


def keep_first_frame(latents: torch.Tensor, frame0: torch.Tensor | None) -> torch.Tensor:
    """TI2V with an image: latent frame 0 is the image latent, always (``(1 - m) z + m x`` with m = 0 on frame 0);
    likewise the first K frames of a window that continues another."""
    if frame0 is None:
        return latents
    return torch.cat([frame0.to(latents.dtype), latents[:, :, known_frames(frame0) :]], dim=2)


def model_timesteps(
    t: int | float, latents: torch.Tensor, frame0: torch.Tensor | None, patch: tuple[int, int, int]
) -> torch.Tensor | TokenTimesteps:
    """(B,) timesteps (int64 for an int ``t``, float32 for a float one), or per token with the tokens of the given
    first frames at t = 0 (TI2V): values [0, t] and an index that is 0 on those frames. Fill kernels only: nothing
    is copied from the host, nothing waits for the device."""
    b = latents.shape[0]
    if frame0 is None:
        dtype = torch.int64 if isinstance(t, int) else torch.float32
        return torch.full((b,), t, dtype=dtype, device=latents.device)
    f, h, w = (n // p for n, p in zip(latents.shape[2:], patch, strict=True))
    values = torch.full((b, 2), float(t), device=latents.device)
    values[:, 0] = 0.0
    given = known_frames(frame0) // patch[0]
    index = (torch.arange(f * h * w, device=latents.device) >= given * h * w).long()  # (L,): 0 on the given frames
    return TokenTimesteps(values, index.expand(b, -1))


def twice(t: torch.Tensor | TokenTimesteps) -> torch.Tensor | TokenTimesteps:
    """The timesteps of a CFG batch (the batch twice)."""
    return t.repeat(2) if isinstance(t, TokenTimesteps) else torch.cat([t, t])


def guided_velocity(
    model: nn.Module,
    latents: torch.Tensor,
    t: torch.Tensor | TokenTimesteps,
    cond: Conditioning,
    scale: float,
    batch_cfg: bool = True,
    guidance: Guidance = CFG,
    skip: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    kept: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Classifier-free guided velocity, the passes combined by ``guidance``; both passes in one batch when
    ``batch_cfg`` (not with NAG, whose conditional pass reads a context of twice the batch, nor when the
    unconditional pass leaves blocks out); ``skip``: the blocks skip layer guidance leaves out of its third pass (the
    prompt's) and of the unconditional pass, on its steps; ``kept``: where the unconditional velocity goes, for a
    solver that reads it (ComfyUI's CFG++ samplers: then the unconditional pass runs at guidance 1 too)."""
    y, positive = cond.y, cond.positive()
    third, uncond_skip = skip
    v_skip = None if not third else model(latents, t, positive, y=y, skip_blocks=third)
    if scale == 1.0 and kept is None:  # guidance off: uncond + 1 * (cond - uncond) == cond, no unconditional pass
        return guidance.combine(model(latents, t, positive, y=y), None, scale, v_skip)
    if batch_cfg and cond.context_nag is None and not uncond_skip:
        both = model(
            torch.cat([latents, latents]),
            twice(t),
            torch.cat([cond.context, cond.context_null]),
            y=None if y is None else torch.cat([y, y]),
        )
        v_cond, v_uncond = both.chunk(2)
    else:
        v_cond = model(latents, t, positive, y=y)
        v_uncond = model(latents, t, cond.context_null, y=y, skip_blocks=uncond_skip)
    if kept is not None:
        kept.append(v_uncond)
    return guidance.combine(v_cond, v_uncond, scale, v_skip)


def _base_velocity(batch_cfg: bool, step: Step, kept: list[torch.Tensor] | None = None) -> Velocity:
    guidance, skip = step.guidance, step.guidance.skipped_layers(step.index, step.total, step.sigma)
    return lambda model, latents, t, cond, scale: guided_velocity(
        model, latents, t, cond, scale, batch_cfg, guidance, skip, kept
    )


def _reading(state: SolverState, kept: list[torch.Tensor] | None) -> SolverState:
    """``state`` with the unconditional velocity of the model call just made, for a solver that reads it."""
    if kept is None:
        return state
    if not kept:
        raise ValueError("a CFG++ sampler reads the unconditional pass, which this run's hooks did not make")
    return replace(state, uncond=kept.pop())


def _evaluate(
    model: nn.Module, velocity: Velocity, x: torch.Tensor, timestep: int | float, cond: Conditioning, step: Step
) -> torch.Tensor:
    """The step's velocity at ``x`` and ``timestep``; zero on CFG-Zero*'s first steps (no forward)."""
    if step.guidance.zeroed(step.index):
        return torch.zeros_like(x, dtype=torch.float32)
    return velocity(model, x, model_timesteps(timestep, x, cond.frame0, model.cfg.patch_size), cond, step.guide_scale)


def _solver_state(sampler: Sampler, calls: Sequence[Call], n: int) -> SolverState:
    """A fresh solver state for call ``n`` of ``calls``: on its schedule, from its seed, to its end."""
    call = calls[n]
    stop = calls[n + 1].start if n + 1 < len(calls) else None
    seed = sampler.seed if call.seed is None else call.seed
    return sampler.solver.init(_schedule(sampler, calls, n), seed, stop, call_setting(calls, n, "shift", sampler.shift))


def _schedule(sampler: Sampler, calls: Sequence[Call], n: int) -> Schedule:
    """The schedule call ``n`` walks: its own, else the last one given before it, else the run's."""
    return call_setting(calls, n, "schedule", sampler.schedule)


def call_setting(calls: Sequence[Call], n: int, name: str, default):
    """Call ``n``'s setting ``name``: its own, else the last one a call before it gave, else ``default``."""
    return next((getattr(c, name) for c in reversed(calls[: n + 1]) if getattr(c, name) is not None), default)


def denoise(
    experts: Callable[[str], nn.Module] | Mapping[str, nn.Module],
    noise: torch.Tensor,
    cond: Conditioning,
    sampler: Sampler,
    hooks: Iterable[StepHook] = (),
) -> torch.Tensor:
    """Integrate from noise to data latents. ``experts(name)`` returns the expert ready on the device (a placement
    policy, ``runtime.offload.ExpertPlacement``), or ``experts`` is a mapping of them."""
    get = experts.__getitem__ if isinstance(experts, Mapping) else experts
    hooks, (steps, calls) = list(hooks), sampler.plan()
    latents = keep_first_frame(noise, cond.frame0)
    state = _solver_state(sampler, calls, 0)
    try:
        for hook in hooks:
            hook.begin(steps)
        for step in steps:
            if step.index and step.call != steps[step.index - 1].call:  # (ComfyUI's next sampler call)
                state = _solver_state(sampler, calls, step.call)
                before, after = (_schedule(sampler, calls, n) for n in (step.call - 1, step.call))
                if after is not before:
                    latents = keep_first_frame(rescale(latents, step.index, before, after), cond.frame0)
            model = get(step.expert)
            kept = [] if sampler.solver.uncond else None  # (the unconditional velocities, for CFG++ samplers)
            velocity = _base_velocity(sampler.batch_cfg, step, kept)
            for hook in hooks:
                hook.before(step, model)
                velocity = hook.wrap(velocity, step)
            if sampler.solver.calls_model(state, step.index):
                v = _evaluate(model, velocity, latents, step.timestep, cond, step)
                state = _reading(state, kept)
            else:  # (a step that needs no model output: RES4LYF's last, a denoise at the model's smallest sigma)
                v = torch.zeros_like(latents)
            latents, state = sampler.solver.step(state, v, latents, step.index)
            while state.pending is not None:  # (a step of two model calls: heun's, dpm_2's, at the sigma it asks)
                x = keep_first_frame(state.pending[0].to(latents.dtype), cond.frame0)
                v = _evaluate(model, velocity, x, float(state.pending[1]) * 1000.0, cond, step)
                latents, state = sampler.solver.step(_reading(state, kept), v, latents, step.index)
            latents = keep_first_frame(latents, cond.frame0)
            for hook in hooks:
                replaced = hook.after(step, latents)
                if replaced is not None:  # (diffusers' callback_on_step_end may change the latents)
                    latents = keep_first_frame(replaced, cond.frame0)
            if any(hook.finished() for hook in hooks):  # (diffusers' interrupt: the latents so far are the result)
                break
    finally:
        for hook in hooks:
            hook.end()
    return latents
