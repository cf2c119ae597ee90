"""MagCache for the Wan 2.2 mixture of experts: on steps where the DiT's output barely changes, skip its block stack and
add the block residual (output - input of the blocks) of the last step it ran, as a step hook (``MagCache``).

MagCache (Ma et al., Zehong-Ma/MagCache) decides from a calibrated curve of magnitude ratios ||r_t|| / ||r_{t-1}||
(``runtime.cache_curve``): after a computed step, each following step multiplies an accumulated ratio by its own and
adds |1 - accumulated| to an error; the step reuses the residual while the error stays under the threshold and at
most ``max_skips`` steps in a row were reused, and a computed step resets both. The ratios depend only on the step
list, so the whole pattern is decided before sampling (``plan``): deterministic, the same on every rank.

The Wan 2.2 trap (diffusers #14025: one cache for both transformers reused a residual across the expert switch,
where the calibrated ratio dips to 0.66): here each expert has its own cache and its own stretch of the plan, the
first step of each expert (and its first ``retention`` fraction of steps) always runs, and the high-noise expert's
residuals are freed at the switch. Each CFG branch has its own accumulator; a step of the batched CFG forward is
skipped only when both branches would be. Runs of fewer than ``MIN_STEPS`` steps are never cached (a distilled
4-step run has nothing to spare), and threshold 0 skips nothing: the frames are those of an uncached run, bit for bit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from wanflow.runtime.cache_curve import Curve
from wanflow.runtime.easycache import EasyCacheSettings, parse_easycache
from wanflow.sampling.hooks import Step, StepHook

METHODS = ("magcache", "easycache")
DEFAULT_THRESHOLD = 0.1  # chosen on the combinations seen in training (README, "Step cache and previews")
MAX_SKIPS = 2  # K: steps in a row that may reuse a residual (MagCache's script default)
RETENTION = 0.2  # the first fraction of each expert's steps always runs (MagCache's script default)
MIN_STEPS = 10  # fewer steps than this: no caching at all


@dataclass(frozen=True)
class CacheSettings:
    """How a step cache decides; ``parse_cache`` reads them from "magcache[:THRESHOLD]"."""

    threshold: float = DEFAULT_THRESHOLD  # accumulated error under which a step reuses; 0 = never
    max_skips: int = MAX_SKIPS
    retention: float = RETENTION

    def __str__(self) -> str:
        return f"magcache:{self.threshold:g}"


def parse_cache(spec: str | None) -> CacheSettings | EasyCacheSettings | None:
    """``None``, "" or "none": no cache; "magcache" or "magcache:THRESHOLD" (a number >= 0); "easycache",
    "easycache:THRESHOLD" or "easycache:THRESHOLD:START:END" (``runtime.easycache``)."""
    if spec is None or spec in ("", "none"):
        return None
    method, _, value = str(spec).partition(":")
    if method not in METHODS:
        raise ValueError(
            f"unknown step cache {spec!r}; use magcache[:THRESHOLD] (e.g. magcache:0.1) or "
            "easycache[:THRESHOLD[:START:END]] (e.g. easycache:0.2)"
        )
    if method == "easycache":
        return parse_easycache(value)
    if not value:
        return CacheSettings()
    try:
        threshold = float(value)
    except ValueError:
        threshold = float("nan")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"the magcache threshold is a number >= 0 (0 = no skipping), got {value!r}")
    return CacheSettings(threshold)


def plan(curve: Curve, steps: Sequence[Step], settings: CacheSettings) -> list[bool]:
    """Per step, whether it reuses a residual instead of running the blocks. Each expert's stretch of steps is
    planned on its own, so no reuse follows the switch before the new expert has computed."""
    if len(steps) < MIN_STEPS or settings.threshold <= 0:
        return [False] * len(steps)
    skips: list[bool] = []
    for _, stretch in itertools.groupby(steps, key=lambda s: s.expert):
        stretch = list(stretch)
        branches = 1 if all(s.guide_scale == 1.0 for s in stretch) else 2  # guidance off: one (conditional) forward
        ratios = [curve.at(s.skipped + s.index, s.skipped + s.total)[:branches] for s in stretch]  # (whole-run place)
        skips.extend(plan_stretch(ratios, settings))
    return skips


def plan_stretch(ratios: Sequence[Sequence[float]], settings: CacheSettings) -> list[bool]:
    """MagCache's rule over one expert's consecutive steps, given per step the ratio of each branch that runs."""
    warmup = max(1, int(settings.retention * len(ratios)))  # MagCache's int(retention * steps), at least one
    skips = []
    accumulated, error, reused = None, None, 0
    for j, step_ratios in enumerate(ratios):
        skip = False
        if j >= warmup:
            accumulated = [a * r for a, r in zip(accumulated, step_ratios, strict=True)]
            error = [e + abs(1.0 - a) for e, a in zip(error, accumulated, strict=True)]
            reused += 1
            skip = reused <= settings.max_skips and all(e < settings.threshold for e in error)
        if not skip:  # a computed step: start accumulating afresh from here
            accumulated, error, reused = [1.0] * len(step_ratios), [0.0] * len(step_ratios), 0
        skips.append(skip)
    return skips


class ExpertCache:
    """One expert's block residuals (``models.dit.BlockCache``): one slot per forward of a step, so the rows of a
    batched CFG forward hold both branches and unbatched CFG gets a slot per branch. A computed step keeps its
    residual only when the next step reuses it (``keep``), else frees the slot. ``reused`` lists (step, step that
    computed the residual) for every reuse; ``runs`` counts the block-stack runs."""

    def __init__(self, expert: str):
        self.expert = expert
        self.slots: list[tuple[torch.Tensor, int] | None] = []  # (residual, step index that computed it)
        self.reused: list[tuple[int, int]] = []
        self.runs = 0
        self.step, self.skip, self.keep, self.call = -1, False, False, 0

    def begin_step(self, index: int, skip: bool, keep: bool = True) -> None:
        self.step, self.skip, self.keep, self.call = index, skip, keep, 0

    def reuse(self, tokens: torch.Tensor) -> torch.Tensor | None:
        call, self.call = self.call, self.call + 1
        entry = self.slots[call] if call < len(self.slots) else None
        if not self.skip or entry is None or entry[0].shape != tokens.shape:
            self.runs += 1
            return None
        self.reused.append((self.step, entry[1]))
        return entry[0]

    def store(self, tokens: torch.Tensor, out: torch.Tensor) -> None:
        entry, call = ((out - tokens, self.step) if self.keep else None), self.call - 1
        if call < len(self.slots):
            self.slots[call] = entry
        else:
            self.slots.append(entry)

    def free(self) -> None:
        self.slots.clear()


class MagCache(StepHook):
    """The step cache of one run: ``begin`` plans the skips, ``before`` hands each step's model the cache of its
    expert (freeing the previous expert's residuals at the switch), ``end`` detaches and frees everything."""

    def __init__(self, curve: Curve, settings: CacheSettings | None = None):
        self.curve = curve
        self.settings = settings or CacheSettings()
        self.skips: list[bool] = []
        self.caches: dict[str, ExpertCache] = {}

    def begin(self, steps: Sequence[Step]) -> None:
        self.skips = plan(self.curve, steps, self.settings)
        self.caches = {}
        self._models: dict[int, nn.Module] = {}

    def before(self, step: Step, model: nn.Module) -> None:
        cache = self.caches.get(step.expert)
        if cache is None:
            for other in self.caches.values():
                other.free()  # never read again: no residual crosses the switch
            cache = self.caches[step.expert] = ExpertCache(step.expert)
        following = step.index + 1
        keep = following < len(self.skips) and self.skips[following] and step.next_expert == step.expert
        cache.begin_step(step.index, self.skips[step.index], keep)
        model.block_cache = cache
        self._models[id(model)] = model

    def end(self) -> None:
        for model in self._models.values():
            model.block_cache = None
        self._models = {}
        for cache in self.caches.values():
            cache.free()

    @property
    def reused_steps(self) -> int:
        """Steps whose block stack did not run (each reused every forward of the step)."""
        return len({step for cache in self.caches.values() for step, _ in cache.reused})
