"""A run as ComfyUI's chain of sampler calls: the community's "three KSampler" Wan 2.2 workflows run the high-noise
expert without the step-distillation LoRA and with guidance for a few steps, then with the LoRA and without
guidance, then the low-noise expert with its LoRA. Each call starts its solver afresh (its step noise from its own
seed), at its own guidance scale, with its own LoRA strengths.

``resolve_calls`` checks what a request asks (``sampler_calls``, ``call_guide_scale``, ``call_seeds``,
``call_loras``) into a ``CallPlan``; ``loop_calls`` gives the shared loop its ``core.Call`` list (with
``low_noise_seed`` and ``low_noise_shift``, the two-call forms, on the same path); ``CallLoras`` sets each call's LoRA
strengths, a step hook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from wanflow.configs import DENSE, HIGH, LOW
from wanflow.pipelines.core import Call
from wanflow.runtime.lora import RunStrengths, lora_state
from wanflow.runtime.step_cache import CacheSettings, parse_cache
from wanflow.sampling.hooks import Step
from wanflow.sampling.noise import draw_seed
from wanflow.sampling.schedule import Schedule


@dataclass(frozen=True)
class CallPlan:
    """A run's sampler calls as asked: where each starts (the first at 0), its guidance scale (None: its expert's)
    and the seed of its step noise (None: the run's); LoRA name -> its strength in each call of its experts."""

    starts: tuple[int, ...]
    guide_scales: tuple[float, ...] | None = None
    seeds: tuple[int | None, ...] = ()
    loras: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def metadata(self) -> dict[str, object]:
        return {
            "sampler_calls": list(self.starts),
            **({"call_guide_scale": list(self.guide_scales)} if self.guide_scales else {}),
            **({"call_seeds": list(self.seeds[1:])} if any(s is not None for s in self.seeds) else {}),
            **({"call_loras": {name: list(s) for name, s in self.loras}} if self.loras else {}),
        }


def numbers(value: Any, name: str, kind: type) -> tuple:
    """``"2,4"``, a number or a list of them, as a tuple of ``kind``; anything else an error naming ``name``."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(kind(v.strip() if isinstance(v, str) else v) for v in items if not isinstance(v, bool))
    except (TypeError, ValueError):
        out = ()
    whole = kind is not int or all(float(v) == o for v, o in zip(items, out, strict=False))
    if not out or len(out) != len(items) or not whole:
        raise ValueError(f"{name} takes {kind.__name__}s separated by commas, got {value!r}")
    if kind is float and not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} takes finite numbers, got {value!r}")
    return out


def resolve_calls(o, steps: int, switch: int | None, moe: bool, one_window: bool, max_guide: float) -> CallPlan | None:
    """The calls ``o`` (``GenerateOptions``) asks for, checked against the run's ``steps`` and expert ``switch``;
    None where it asks none."""
    details = {"call_guide_scale": o.call_guide_scale, "call_seeds": o.call_seeds, "call_loras": o.call_loras}
    if o.sampler_calls is None:
        given = [name for name, value in details.items() if value is not None]
        if given:
            raise ValueError(f"{given} set each sampler call's values: give sampler_calls (where the calls start)")
        return None
    later = numbers(o.sampler_calls, "sampler_calls", int)
    if list(later) != sorted(set(later)) or not all(0 < k < steps for k in later):
        raise ValueError(f"sampler_calls are the steps the calls after the first start at, rising, 1..{steps - 1}: "
                         f"got {o.sampler_calls!r}")  # fmt: skip
    if moe and (switch is None or switch not in later):
        raise ValueError("on two experts the switch is a call of its own: give switch_step, one of sampler_calls")
    if not one_window:
        raise ValueError("sampler_calls run one window from noise: not with video, extend or a longer video")
    if isinstance(parse_cache(o.cache), CacheSettings):
        raise ValueError("magcache plans each expert's steps as one call: not with sampler_calls (easycache is)")
    if o.low_noise_seed is not None:
        raise ValueError("low_noise_seed is the second call's seed: with sampler_calls, give call_seeds")
    starts = (0, *later)
    scales = None
    if o.call_guide_scale is not None:
        scales = numbers(o.call_guide_scale, "call_guide_scale", float)
        if len(scales) != len(starts) or not all(0 <= g <= max_guide for g in scales):
            raise ValueError(f"call_guide_scale: one scale in 0..{max_guide:g} for each of the {len(starts)} calls, "
                             f"got {o.call_guide_scale!r}")  # fmt: skip
    seeds: tuple[int | None, ...] = (None,) * len(starts)
    if o.call_seeds is not None:
        given = numbers(o.call_seeds, "call_seeds", int)
        if len(given) != len(later):
            raise ValueError(f"call_seeds: a seed for each call after the first ({len(later)}), got {o.call_seeds!r}")
        seeds = (None, *(draw_seed(s, "call_seeds") for s in given))
    return CallPlan(starts, scales, seeds, _loras(o.call_loras))


def _loras(value: Any) -> tuple[tuple[str, tuple[float, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"call_loras maps a loaded LoRA's name to its strength in each call, got {value!r}")
    return tuple((str(name), numbers(s, f"call_loras[{name!r}]", float)) for name, s in value.items())


def loop_calls(
    plan: CallPlan | None,
    switch: int | None,
    low_seed: int | None,
    low_schedule: Schedule | None,
    noised: bool,
    low_shift: float | None = None,
) -> tuple[Call, ...]:
    """The shared loop's calls: the plan's (the call at the switch on ``low_schedule`` at ``low_shift`` where given),
    else ComfyUI's two where the low-noise call has a seed of its own (a solver that draws noise) or steps of its own,
    else none (the loop's default: one call, split at the switch for the solvers that start afresh there)."""
    if plan is None:
        if switch is None or (low_schedule is None and not (noised and low_seed is not None)):
            return ()
        return Call(0), Call(switch, seed=low_seed, schedule=low_schedule, shift=low_shift)
    scales = plan.guide_scales or (None,) * len(plan.starts)
    return tuple(
        Call(start, seed, low_schedule, scale, low_shift) if start == switch else Call(start, seed, guide_scale=scale)
        for start, seed, scale in zip(plan.starts, plan.seeds, scales, strict=True)
    )


def call_experts(plan: CallPlan, switch: int | None) -> list[str]:
    """The expert each call runs: the high-noise one before the switch, the low-noise one from it; a dense model's."""
    return [DENSE if switch is None else HIGH if start < switch else LOW for start in plan.starts]


def check_strengths(request, expert: str | None, strengths: tuple[float, ...], what: str) -> None:
    """A LoRA's strengths, one for each call of its expert (``expert`` None: of every expert), against a resolved
    request's calls: for checks before any weights load (the CLI's flags, a server's job)."""
    if request.calls is None:
        raise ValueError(f"{what}: a strength for each sampler call needs sampler_calls")
    n = sum(expert in (None, e) for e in call_experts(request.calls, request.switch_step))
    if len(strengths) not in (1, n):
        raise ValueError(f"{what}: {len(strengths)} strengths for the {n} sampler calls of its experts; give one, or "
                         "one for each")  # fmt: skip


class CallLoras(RunStrengths):
    """Each call's LoRA strengths (``CallPlan.loras``): a LoRA's list holds one strength for every call of the experts
    it is on, in order, or one for all; the strengths it was loaded with come back at the end of the run."""

    def __init__(self, plan: CallPlan, switch: int | None, models: Mapping[str, nn.Module]):
        super().__init__()
        owners = call_experts(plan, switch)
        self.plan: dict[tuple[str, int], float] = {}  # (LoRA, call) -> strength
        for name, strengths in plan.loras:
            on = [e for e, m in models.items() if name in lora_state(m).applied]
            if not on:
                loaded = sorted({n for m in models.values() for n in lora_state(m).applied})
                raise ValueError(f"call_loras names LoRA {name!r}, which is not loaded (loaded: {loaded})")
            if any(lora_state(models[e]).applied[name].merged for e in on):
                raise ValueError(f"call_loras needs LoRA {name!r} beside the weights, not merged into them")
            calls = [i for i, e in enumerate(owners) if e in on]
            if len(strengths) not in (1, len(calls)):
                raise ValueError(f"call_loras[{name!r}]: one strength, or one for each of the {len(calls)} calls of "
                                 f"its experts ({'/'.join(on)}), got {len(strengths)}")  # fmt: skip
            for k, call in enumerate(calls):
                self.plan[(name, call)] = strengths[min(k, len(strengths) - 1)]

    def before(self, step: Step, model: nn.Module) -> None:
        state = lora_state(model)
        for (name, call), strength in self.plan.items():
            if call == step.call and name in state.applied:
                self.set(model, state.applied[name], strength)
