"""How a step's two predictions become its velocity: the guidance rule, one value per run, read by every place that
combines them (the loop's ``guided_velocity`` and CFG parallelism's).

- ``cfg`` (the reference): ``v_u + g (v_c - v_u)``.
- ``cfg_zero_star`` (CFG-Zero*, Fan et al. 2025, arXiv 2503.18886): the unconditional prediction is first scaled by
  the projection of the conditional one on it, ``s = <v_c, v_u> / |v_u|^2`` per sample, so
  ``v = s v_u + g (v_c - s v_u)``; and the first ``zero_init_steps`` steps of the run move nothing (velocity 0, no
  forward: the authors' "zero init", for flow models whose first velocities are the least accurate). diffusers'
  ``ClassifierFreeZeroStarGuidance`` computes the same (1 zero step by default); ComfyUI's ``CFGZeroStar`` node is the
  scale alone (``cfg_zero_star:0``).

At guidance 1 both are the conditional prediction alone (no unconditional pass runs); the zero steps still apply.

Beside either rule, skip layer guidance (SLG; StabilityAI's, as diffusers' ``SkipLayerGuidance`` and ComfyUI's
``SkipLayerGuidanceDiT`` node run it): on the steps in its range a third pass, the prompt's with some DiT blocks left
out, and ``v + s (v_c - v_skip)`` added to the rule's velocity, to steer away from what a weakened model predicts.
Its ``uncond`` mode (ComfyUI's ``SkipLayerGuidanceDiTSimple``) runs no third pass: the
unconditional pass itself leaves the blocks out, so guidance pushes away from the weakened model's unconditional
prediction (no scale; nothing at guidance 1, where no unconditional pass runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wanflow.sampling.schedule import percent_to_sigma

RULES = ("cfg", "cfg_zero_star")
SLG_MODES = ("pass", "uncond")
MAX_ZERO_STEPS = 100


@dataclass(frozen=True)
class SkipLayers:
    """SLG's settings: the blocks the third pass leaves out, its scale, and the steps it runs on: those strictly
    after ``int(start * N)`` and before ``int(stop * N)`` of the run's N steps (diffusers' rule and defaults), or, with
    a ``window`` of sigmas (ComfyUI's nodes' start and end percent, ``comfy_window``), those whose sigma lies in it."""

    layers: tuple[int, ...]
    scale: float = 2.8
    start: float = 0.01
    stop: float = 0.2
    mode: str = "pass"  # "pass": a third pass; "uncond": the unconditional pass without the blocks
    # (high, low): SLG's steps are those with low <= sigma <= high, in place of start and stop
    window: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in SLG_MODES:
            raise ValueError(f"slg_mode is one of {', '.join(SLG_MODES)}, got {self.mode!r}")
        if not self.layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
            raise ValueError(f"slg_layers are block indices (0, 1, ...), at least one, got {self.layers!r}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"slg_scale is a number >= 0, got {self.scale!r}")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ValueError(f"slg_start and slg_stop are fractions of the steps, 0 <= start <= stop <= 1, got "
                             f"{self.start!r} and {self.stop!r}")  # fmt: skip

        if self.window is not None and not 0.0 <= self.window[1] <= self.window[0] <= 1.0:
            raise ValueError(f"slg's sigma window is (high, low) with 0 <= low <= high <= 1, got {self.window!r}")

    def runs_at(self, index: int, total: int, sigma: float | None = None) -> bool:
        """Whether step ``index`` of ``total`` (at ``sigma``, which a window needs) runs SLG."""
        if self.window is None:
            return int(self.start * total) < index < int(self.stop * total)
        if sigma is None:
            raise ValueError("skip layer guidance by a sigma window needs the step's sigma")
        return self.window[1] <= sigma <= self.window[0]

    def metadata(self) -> dict[str, object]:
        steps = {"start": self.start, "stop": self.stop} if self.window is None else {"sigmas": list(self.window)}
        out = {"layers": list(self.layers), **steps, "mode": self.mode}
        return out | ({"scale": self.scale} if self.mode == "pass" else {})


def comfy_window(start_percent: float, end_percent: float, shift: float) -> tuple[float, float]:
    """The sigmas ComfyUI's skip layer guidance nodes run between, from their start and end percent of the model's
    timesteps on a model of shift ``shift``: (``percent_to_sigma(start)``, ``percent_to_sigma(end)``)."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(
            f"slg_percent is START,END with 0 <= START <= END <= 1, got {start_percent!r}, {end_percent!r}"
        )
    return percent_to_sigma(start_percent, shift), percent_to_sigma(end_percent, shift)


@dataclass(frozen=True)
class Guidance:
    rule: str = "cfg"
    zero_init_steps: int = 0  # cfg_zero_star: the run's first steps that move nothing
    slg: SkipLayers | None = None  # skip layer guidance beside the rule

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(
                f"guidance is one of {', '.join(RULES)} (cfg_zero_star:K for K zero steps), got {self.rule!r}"
            )
        if self.rule == "cfg" and self.zero_init_steps:
            raise ValueError("zero steps belong to cfg_zero_star (cfg_zero_star:K)")

    def zeroed(self, index: int) -> bool:
        """Whether step ``index`` of the run moves nothing."""
        return index < self.zero_init_steps

    def skipped_layers(
        self, index: int, total: int, sigma: float | None = None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The blocks step ``index`` of ``total`` (at ``sigma``) leaves out of (SLG's third pass, the unconditional
        pass); () for none."""
        if self.slg is None or not self.slg.runs_at(index, total, sigma):
            return (), ()
        return ((), self.slg.layers) if self.slg.mode == "uncond" else (self.slg.layers, ())

    def combine(
        self, v_cond: torch.Tensor, v_uncond: torch.Tensor | None, scale: float, v_skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The step's velocity from the conditional and unconditional predictions (``v_uncond`` None at guidance 1)
        and, on SLG's steps, the prediction without its blocks."""
        if v_uncond is None:
            v = v_cond
        else:
            if self.rule == "cfg_zero_star":
                v_uncond = v_uncond * optimized_scale(v_cond, v_uncond)
            v = v_uncond + scale * (v_cond - v_uncond)
        return v if v_skip is None else v + self.slg.scale * (v_cond - v_skip)

    def __str__(self) -> str:
        return self.rule if self.rule == "cfg" else f"{self.rule}:{self.zero_init_steps}"


CFG = Guidance()


def optimized_scale(v_cond: torch.Tensor, v_uncond: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """CFG-Zero*'s ``<v_c, v_u> / (|v_u|^2 + eps)`` per sample, in float32, shaped to broadcast over ``v_uncond``."""
    c, u = v_cond.flatten(1).float(), v_uncond.flatten(1).float()
    s = (c * u).sum(1) / ((u * u).sum(1) + eps)
    return s.view(-1, *[1] * (v_uncond.ndim - 1)).to(v_uncond.dtype)


def parse_guidance(spec: str | None) -> Guidance:
    """``"cfg"``, ``"cfg_zero_star"`` (1 zero step, diffusers' default) or ``"cfg_zero_star:K"``; None: cfg."""
    if spec is None:
        return CFG
    if not isinstance(spec, str):
        raise ValueError(f"guidance is a string such as 'cfg_zero_star:1', got {spec!r}")
    rule, colon, steps = spec.strip().partition(":")
    if rule != "cfg_zero_star":
        return Guidance(rule, 0 if not colon else _zero_steps(steps))
    return Guidance(rule, _zero_steps(steps) if colon else 1)


def _zero_steps(text: str) -> int:
    if not text.strip().isdigit() or int(text) > MAX_ZERO_STEPS:
        raise ValueError(f"cfg_zero_star:K takes K zero steps, 0..{MAX_ZERO_STEPS}, got {text!r}")
    return int(text)
