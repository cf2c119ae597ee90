"""The calibration a step cache reads (``runtime.step_cache``): MagCache's magnitude-ratio curve, how it is measured
and where a pipeline finds it.

A curve holds, for each step of a run, the mean over tokens of ||r_t|| / ||r_{t-1}||, where r is the residual of the
DiT's block stack (blocks' output - input) at that step, for the conditional and the unconditional branch; step 0's
ratios are 1. It is stored as MagCache stores it: one flat list, conditional then unconditional per step.

Where a pipeline finds it (``load_curve``): ``magcache.json`` beside the checkpoint (written by ``wanflow
calibrate-cache``; the built-in models ship theirs), else the published Wan 2.2 ratios of the task
(``magcache_published.json``: MagCache4Wan2.2's arrays, 40 steps for the A14B models, 50 for TI2V-5B), else an error
that says to calibrate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wanflow.sampling.hooks import Step, StepHook

CURVE_FILE = "magcache.json"
PUBLISHED_FILE = Path(__file__).with_name("magcache_published.json")


@dataclass(frozen=True)
class Curve:
    """Calibrated magnitude ratios, per step of a ``steps``-step run: (conditional, unconditional)."""

    ratios: tuple[tuple[float, float], ...]
    source: str = ""  # where the numbers come from (a file, the published arrays)

    @property
    def steps(self) -> int:
        return len(self.ratios)

    def at(self, index: int, total: int) -> tuple[float, float]:
        """The ratios of step ``index`` of a ``total``-step run: those of the calibrated step nearest in relative
        position (MagCache's ``nearest_interp``; Python's round, like numpy's, rounds halves to even)."""
        if total == self.steps:
            return self.ratios[index]
        return self.ratios[round(index * (self.steps - 1) / max(total - 1, 1))]

    @classmethod
    def from_json(cls, data: dict, source: str) -> Curve:
        """A curve from ``{"steps": N, "ratios": [2N numbers: cond, uncond per step]}``; a clear error otherwise."""
        flat, steps = data.get("ratios"), data.get("steps")
        if not isinstance(steps, int) or steps < 1 or not isinstance(flat, list) or len(flat) != 2 * steps:
            raise ValueError(
                f"{source}: a cache curve needs 'steps' N and 'ratios': 2N numbers, cond and uncond per step"
            )
        if not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in flat):
            raise ValueError(f"{source}: cache ratios must be positive finite numbers")
        return cls(tuple(zip(map(float, flat[0::2]), map(float, flat[1::2]), strict=True)), source)

    def to_json(self, **made_with: object) -> dict:
        """The stored form, with what the curve was made with (solver, shift, prompts...) beside the ratios."""
        return {**made_with, "steps": self.steps, "ratios": [round(r, 5) for pair in self.ratios for r in pair]}


def read_curve(path: Path) -> Curve:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return Curve.from_json(data, str(path))


def published_curve(task: str) -> Curve | None:
    """The published Wan 2.2 ratios of ``task`` (``t2v-A14B``, ``i2v-A14B``, ``ti2v-5B``), or None."""
    published = json.loads(PUBLISHED_FILE.read_text())
    if task not in published:
        return None
    return Curve.from_json(published[task], f"published ratios for {task} ({published['source']})")


def load_curve(root: Path | None, task: str) -> Curve:
    """The curve of the checkpoint in ``root`` running ``task``: its own ``magcache.json``, else the published one."""
    path = None if root is None else Path(root) / CURVE_FILE
    if path is not None and path.is_file():
        return read_curve(path)
    curve = published_curve(task)
    if curve is None:
        raise ValueError(
            f"the step cache needs a calibration: none beside this checkpoint ({path}) and none published for {task}; "
            f"run `wanflow calibrate-cache --ckpt_dir {root} --task {task}` once"
        )
    return curve


class RatioRecorder(StepHook):
    """Calibration: every step runs uncached, and the hook records per step the mean over tokens of
    ||r_t|| / ||r_{t-1}|| for each branch (the rows of a batched CFG forward, then further forwards, in order).
    ``runs`` holds one list per run: per step, a tuple of ratios, one per branch."""

    def __init__(self):
        self.runs: list[list[tuple[float, ...]]] = []

    def begin(self, steps: Sequence[Step]) -> None:
        self.ratios: list[tuple[float, ...]] = []
        self.previous: list[torch.Tensor] | None = None
        self.current: list[torch.Tensor] = []
        self.models: dict[int, nn.Module] = {}

    def before(self, step: Step, model: nn.Module) -> None:
        self.current = []
        model.block_cache = self
        self.models[id(model)] = model

    def reuse(self, tokens: torch.Tensor) -> None:
        return None  # always run the blocks

    def store(self, tokens: torch.Tensor, out: torch.Tensor) -> None:
        self.current.extend(r.float().norm(dim=-1) for r in (out - tokens).unbind(0))  # (L,) per branch

    def after(self, step: Step, latents: torch.Tensor) -> None:
        norms, previous = self.current, self.previous
        if previous is None or len(previous) != len(norms):
            self.ratios.append((1.0,) * len(norms))
        else:
            self.ratios.append(
                tuple(float((n / p.clamp_min(1e-12)).mean()) for n, p in zip(norms, previous, strict=True))
            )
        self.previous = norms

    def end(self) -> None:
        for model in self.models.values():
            model.block_cache = None
        self.runs.append(self.ratios)

    def curve(self, source: str = "wanflow calibrate-cache") -> Curve:
        """The ratios averaged over the recorded runs (one branch, guidance off, counts for both)."""
        if not self.runs or len({len(run) for run in self.runs}) != 1:
            raise ValueError("average runs of the same number of steps (at least one)")
        steps = []
        for per_run in zip(*self.runs, strict=True):
            mean = [sum(r[b] for r in per_run) / len(per_run) for b in range(len(per_run[0]))]
            steps.append((mean[0], mean[-1]))
        return Curve(tuple(steps), source)


def calibrate(pipe, prompts: Sequence[str], images: Sequence | None = None, seed: int = 0, **options) -> Curve:
    """Run ``pipe`` uncached on each prompt (with its image, if any) and average the ratio curves. ``options``:
    generation options (steps, shift, solver, guide_scale...), the same for every run."""
    recorder = RatioRecorder()
    for i, prompt in enumerate(prompts):
        image = None if images is None else images[i]
        pipe(prompt, image=image, seed=seed + i, hooks=[recorder], **options)
    return recorder.curve()
