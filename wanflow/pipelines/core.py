"""THE denoising loop, shared by every task.

Per step: pick the expert and its guidance scale from the timestep (``sampling.experts``), predict the velocity with
classifier-free guidance ``uncond + g * (cond - uncond)`` (or another rule of ``sampling.guidance``), advance one
solver state across the whole run (it continues through the expert switch; ComfyUI's samplers start afresh there, as
each expert is a sampler call of its own there, on steps of its own where its model's shift differs: ``SecondCall``),
and for TI2V with an image put the image latent back into frame 0.

Everything else a run needs around the steps is a ``StepHook`` (``sampling/hooks.py``): progress, expert prefetch,
CFG parallelism (which replaces the velocity computation), a step cache, per-step LoRA strengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

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
class SecondCall:
    """ComfyUI's second sampler call on steps of its own (its model's shift, ``low_noise_shift``): from step ``start``
    the solver walks ``schedule`` afresh, and the latents are first scaled out of the first call's last sigma and into
    this call's first, ``(1 - s') x / (1 - s)``, as KSampler scales a flow model's latents out of and into each call."""

    start: int
    schedule: Schedule

    def rescale(self, latents: torch.Tensor, first: Schedule) -> torch.Tensor:
        """``latents`` at the first call's sigma of step ``start``, as the second call starts from them."""
        into, out = (1.0 - s.sigmas[self.start].to(latents.device) for s in (self.schedule, first))  # (float32)
        return into * (latents / out)  # (KSampler's inverse noise scaling, then its noise scaling with no noise)


def step_levels(schedule: Schedule, second: SecondCall | None) -> tuple[list, list]:
    """Each step's DiT timestep and sigma: the schedule's, and the second call's from its start."""
    timesteps, sigmas = schedule.timesteps.tolist(), schedule.sigmas.tolist()[:-1]
    if second is None:
        return timesteps, sigmas
    k = second.start
    return timesteps[:k] + second.schedule.timesteps.tolist()[k:], sigmas[:k] + second.schedule.sigmas.tolist()[k:-1]


@dataclass(frozen=True)
class Sampler:
    """How a run integrates: the schedule, the solver, the expert boundary and the guidance."""

    schedule: Schedule
    solver: Solver
    boundary_t: float | None  # the timestep of the expert switch; None for a dense model
    guide_scale: tuple[float, float] | float
    batch_cfg: bool = True  # both guidance passes in one batch
    skipped: int = 0  # steps of the full schedule before ``schedule`` (video to video: its tail)
    guidance: Guidance = CFG  # how each step's two predictions combine
    seed: int | None = None  # the run's seed (the lcm solver's fresh noise at each step)
    low_noise_seed: int | None = (
        None  # the low-noise expert's sampler call's seed (ComfyUI's second KSamplerAdvanced's)
    )
    second: SecondCall | None = None  # the low-noise expert's sampler call on steps of its own

    def steps(self) -> list[Step]:
        timesteps, sigmas = step_levels(self.schedule, self.second)  # python numbers: no device syncs in the loop
        names = [select_expert(t, self.boundary_t) for t in timesteps]
        scales = [guidance_for(t, self.boundary_t, self.guide_scale) for t in timesteps]
        return [
            Step(i, len(timesteps), t, names[i], scales[i], nxt, self.skipped, self.guidance, sigmas[i])
            for i, (t, nxt) in enumerate(zip(timesteps, [*names[1:], None], strict=True))
        ]


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
) -> torch.Tensor:
    """Classifier-free guided velocity, the passes combined by ``guidance``; both passes in one batch when
    ``batch_cfg`` (not with NAG, whose conditional pass reads a context of twice the batch, nor when the
    unconditional pass leaves blocks out); ``skip``: the blocks skip layer guidance leaves out of its third pass (the
    prompt's) and of the unconditional pass, on its steps."""
    y, positive = cond.y, cond.positive()
    third, uncond_skip = skip
    v_skip = None if not third else model(latents, t, positive, y=y, skip_blocks=third)
    if scale == 1.0:  # guidance off: uncond + 1 * (cond - uncond) == cond, no unconditional pass
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
    return guidance.combine(v_cond, v_uncond, scale, v_skip)


def _base_velocity(batch_cfg: bool, step: Step) -> Velocity:
    guidance, skip = step.guidance, step.guidance.skipped_layers(step.index, step.total, step.sigma)
    return lambda model, latents, t, cond, scale: guided_velocity(
        model, latents, t, cond, scale, batch_cfg, guidance, skip
    )


def _restarts(sampler: Sampler) -> bool:
    """Whether the solver starts afresh at the expert switch: ComfyUI's multistep samplers (each expert is a sampler
    call of its own), a noising one given the low-noise expert's call a seed of its own, any on a second call's own
    steps."""
    noised = sampler.solver.noised and sampler.low_noise_seed is not None
    return sampler.solver.restarts_at_switch or noised or sampler.second is not None


def _solver_state(sampler: Sampler, steps: Sequence[Step], first: int) -> SolverState:
    """A fresh solver state for the steps from ``first``: to the expert switch for a solver that starts afresh there,
    with the seed of the low-noise expert's call after it (where given), on the second call's steps (where given)."""
    stop = None
    if _restarts(sampler):
        stop = next((s.index + 1 for s in steps[first:] if s.next_expert not in (None, s.expert)), None)
    seed = sampler.low_noise_seed if first and sampler.low_noise_seed is not None else sampler.seed
    schedule = sampler.second.schedule if first and sampler.second is not None else sampler.schedule
    return sampler.solver.init(schedule, seed, stop)


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
    hooks, steps = list(hooks), sampler.steps()
    latents = keep_first_frame(noise, cond.frame0)
    state = _solver_state(sampler, steps, 0)
    try:
        for hook in hooks:
            hook.begin(steps)
        for step in steps:
            if _restarts(sampler) and step.index and step.expert != steps[step.index - 1].expert:
                state = _solver_state(sampler, steps, step.index)  # (ComfyUI's second sampler call)
                if sampler.second is not None:
                    latents = keep_first_frame(sampler.second.rescale(latents, sampler.schedule), cond.frame0)
            model = get(step.expert)
            velocity = _base_velocity(sampler.batch_cfg, step)
            for hook in hooks:
                hook.before(step, model)
                velocity = hook.wrap(velocity, step)
            if step.guidance.zeroed(step.index):  # (CFG-Zero*'s first steps: no forward)
                v = torch.zeros_like(latents, dtype=torch.float32)
            else:
                t = model_timesteps(step.timestep, latents, cond.frame0, model.cfg.patch_size)
                v = velocity(model, latents, t, cond, step.guide_scale)
            latents, state = sampler.solver.step(state, v, latents, step.index)
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
