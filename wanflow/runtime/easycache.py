"""EasyCache (Zhou et al. 2025, arXiv 2507.02860), as ComfyUI's own EasyCache node runs it: a step cache that needs no
calibration. It watches, model call by model call, how much the model's input moves and how much its output moved
for that, and reuses the last computed output change while the accumulated estimate stays under a threshold.

In a sampler call (ComfyUI's KSampler: here each expert of a run, and each call of a chain), from the model call whose
sigma is at most ``percent_to_sigma(start_percent)`` and while it is above ``percent_to_sigma(end_percent)`` (at the
call's model shift), with x the model's input (the latents and the conditioning channels, (B, C, T, H, W)) and every
distance the mean absolute difference of the inputs or outputs subsampled by 8 along height and width:

- after two computed calls, ``k`` = (output change) / (input change) of the last computed call; a call adds
  ``k * (input change since the last computed call) / mean|last output|`` to an accumulated rate; under the
  threshold, the call reuses: each branch's output is its input's last ``C_out`` channels plus that branch's
  ``output - input`` of the last computed call; otherwise the accumulated rate starts again from 0 and the model runs;
- the rates are those of one branch, ComfyUI's first in its batch: the unconditional pass where classifier-free
  guidance runs, else the prompt's; every branch keeps its own ``output - input``;
- before the window, the model runs and its ``output - input`` is kept; after it, the model runs and nothing is kept.

ComfyUI batches the two passes of a step when memory allows; its node then adds both branches' cached differences to
both (a defect of the node: the two reused outputs come out the same). Here each branch reuses its own, as the node
does where it runs the passes one after the other (and at guidance 1, where there is one pass).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from wanflow.models.dit import TokenTimesteps
from wanflow.sampling.hooks import Step, StepHook, Velocity
from wanflow.sampling.schedule import percent_to_sigma

log = logging.getLogger(__name__)

SUBSAMPLE = 8  # the node's subsample_factor: distances read every 8th row and column of the latents


@dataclass(frozen=True)
class EasyCacheSettings:
    """ComfyUI's EasyCache node's widgets; ``parse_easycache`` reads them from "easycache[:T[:START:END]]"."""

    threshold: float = 0.2  # reuse while the accumulated rate stays under this; 0 = never
    start_percent: float = 0.15  # the share of the model's timesteps before the cache starts
    end_percent: float = 0.95  # ... and after which it stops

    def __post_init__(self):
        numbers = (self.threshold, self.start_percent, self.end_percent)
        if not all(math.isfinite(x) for x in numbers) or self.threshold < 0:
            raise ValueError(f"easycache's threshold is a number >= 0 (0 = no reuse), got {self.threshold!r}")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                f"easycache:T:START:END takes 0 <= START <= END <= 1, got {self.start_percent!r}, {self.end_percent!r}"
            )

    def __str__(self) -> str:
        return f"easycache:{self.threshold:g}:{self.start_percent:g}:{self.end_percent:g}"


def parse_easycache(value: str) -> EasyCacheSettings:
    """ "" -> the node's defaults; "T" -> threshold T; "T:START:END" -> all three."""
    parts = value.split(":") if value else []
    if len(parts) not in (0, 1, 3):
        raise ValueError(
            f"easycache takes easycache, easycache:THRESHOLD or easycache:THRESHOLD:START:END, got easycache:{value}"
        )
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"easycache's settings are numbers (easycache:0.2:0.15:0.95), got {value!r}") from None
    return EasyCacheSettings(*numbers)


def subsample(x: torch.Tensor) -> torch.Tensor:
    return x[..., ::SUBSAMPLE, ::SUBSAMPLE]


def change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The node's distance: the mean absolute difference (a float32 0-d tensor)."""
    return (a - b).flatten().abs().mean()


class CallCache:
    """One sampler call's record: the window of sigmas, the lead branch's rates, each branch's ``output - input``."""

    def __init__(self, settings: EasyCacheSettings, shift: float):
        self.threshold = settings.threshold
        self.start, self.end = (percent_to_sigma(p, shift) for p in (settings.start_percent, settings.end_percent))
        self.lead: str | None = None  # the branch whose rates decide (set at the window's first call)
        self.rate: torch.Tensor | None = None  # k: output change / input change of the last computed call
        self.accumulated: float | torch.Tensor = 0.0
        self.x_prev: torch.Tensor | None = None  # the lead branch's input and output at its last computed call,
        self.out_prev: torch.Tensor | None = None  # subsampled
        self.out_norm: torch.Tensor | None = None  # mean |output| of that call
        self.diffs: dict[str, torch.Tensor] = {}  # branch -> output - input (its last C_out channels)
        self.reused = 0

    def model_for(
        self, model: nn.Module, latents: torch.Tensor, sigma: float, y: torch.Tensor | None, branches: tuple[str, ...]
    ) -> Callable[..., torch.Tensor]:
        """What the step's velocity calls as its model at ``sigma`` (``y``: the conditioning channels): the model
        (past the window), a reuse of the kept differences, or the model with its outputs recorded."""
        if not sigma > self.end:
            return model
        rows = Rows(latents.shape[0], branches)
        lead, input_change = branches[-1], None  # (ComfyUI's first in its batch: uncond under guidance)
        if sigma <= self.start:
            self.lead = self.lead or lead
            if self.lead == lead:
                if self.x_prev is not None:
                    input_change = change(subsample(model_input(latents, y)), self.x_prev)
                if self.out_norm is not None and self.rate is not None:
                    self.accumulated = self.accumulated + (self.rate * input_change) / self.out_norm
                    if self.accumulated < self.threshold and all(b in self.diffs for b in branches):
                        self.reused += 1
                        return Reuse(self, rows)
                    self.accumulated = 0.0
        return Record(self, rows, model, input_change, self.lead == lead)

    def record(self, branch: str, x: torch.Tensor, out: torch.Tensor, input_change, lead: bool) -> None:
        self.diffs[branch] = out - x[:, -out.shape[1] :]  # (the node cuts the input's first channels off)
        if not lead:
            return
        if self.out_norm is not None:
            output_change = change(subsample(out), self.out_prev)
            if input_change is not None:
                self.rate = output_change / input_change
        self.x_prev, self.out_prev = subsample(x).clone(), subsample(out).clone()
        self.out_norm = out.flatten().abs().mean()


def model_input(latents: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The model's input as ComfyUI's model sees it: the latents and the conditioning channels."""
    return latents if y is None else torch.cat([latents, y.to(latents.dtype)], dim=1)


class Rows:
    """Which branch the rows of each model call of a step are, in the order the loop's ``guided_velocity`` calls: a
    CFG batch is the prompt's rows then the negative's; unbatched, the prompt's call comes first."""

    def __init__(self, batch: int, branches: tuple[str, ...]):
        self.batch, self.todo = batch, list(branches)

    def branches(self, x: torch.Tensor) -> list[str]:
        taken = len(self.todo) if x.shape[0] == 2 * self.batch else 1
        names, self.todo = self.todo[:taken], self.todo[taken:]
        return names


class Record:
    """The model, each call's outputs kept (per branch) and the lead branch's rates updated."""

    def __init__(self, cache: CallCache, rows: Rows, model: nn.Module, input_change, lead: bool):
        self.cache, self.rows, self.model, self.input_change, self.lead = cache, rows, model, input_change, lead

    def __call__(self, latents, t, context, y=None, skip_blocks=()) -> torch.Tensor:
        out = self.model(latents, t, context, y=y, skip_blocks=skip_blocks)
        x = model_input(latents, y)
        names = self.rows.branches(x)
        for name, x_rows, out_rows in zip(names, x.chunk(len(names)), out.chunk(len(names)), strict=True):
            self.cache.record(name, x_rows, out_rows, self.input_change, self.lead and name == self.cache.lead)
        return out


class Reuse:
    """No model: each branch's output is its input's last channels plus the branch's kept difference."""

    def __init__(self, cache: CallCache, rows: Rows):
        self.cache, self.rows = cache, rows

    def __call__(self, latents, t, context, y=None, skip_blocks=()) -> torch.Tensor:
        x = model_input(latents, y)
        names = self.rows.branches(x)
        rows = [
            x_rows[:, -self.cache.diffs[n].shape[1] :] + self.cache.diffs[n]
            for n, x_rows in zip(names, x.chunk(len(names)), strict=True)
        ]
        return torch.cat(rows)


def call_sigma(t: torch.Tensor | TokenTimesteps) -> float:
    """The sigma of a model call from its timesteps (1000 sigma; the largest, where given frames sit at 0)."""
    values = t.values if isinstance(t, TokenTimesteps) else t
    return float(values.max()) / 1000.0


class EasyCache(StepHook):
    """EasyCache for one run: a fresh ``CallCache`` for each sampler call (each expert, each call of a chain), at
    that call's model shift (``shift_of(call index)``); ``uncond``: the unconditional pass runs at guidance 1 too (a
    CFG++ sampler's, as ComfyUI's disable_cfg1_optimization)."""

    def __init__(self, settings: EasyCacheSettings, shift_of: Callable[[int], float], uncond: bool = False):
        self.settings, self.shift_of, self.uncond = settings, shift_of, uncond
        self.caches: dict[tuple[int, str], CallCache] = {}
        self.current: CallCache | None = None

    def begin(self, steps) -> None:
        self.caches, self.current = {}, None

    def before(self, step: Step, model: nn.Module) -> None:
        key = (step.call, step.expert)
        if key not in self.caches:
            if self.current is not None:
                self.current.diffs.clear()  # never read again: nothing crosses into the next call
            self.caches[key] = CallCache(self.settings, self.shift_of(step.call))
        self.current = self.caches[key]

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        cache = self.current

        def cached(model, latents, t, cond, scale):
            branches = ("cond",) if scale == 1.0 and not self.uncond else ("cond", "uncond")
            inner = cache.model_for(model, latents, call_sigma(t), cond.y, branches)
            return velocity(inner, latents, t, cond, scale)

        return cached

    def end(self) -> None:
        if self.caches:
            log.info("%s: %d model calls reused", self.settings, self.reused_calls)
        for cache in self.caches.values():
            cache.diffs.clear()
        self.current = None

    @property
    def reused_calls(self) -> int:
        """Model calls (each branch of a step at once) that reused the kept differences."""
        return sum(c.reused for c in self.caches.values())
