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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RULES = ("cfg", "cfg_zero_star")
MAX_ZERO_STEPS = 100


@dataclass(frozen=True)
class Guidance:
    rule: str = "cfg"
    zero_init_steps: int = 0  # cfg_zero_star: the run's first steps that move nothing

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

    def combine(self, v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        if self.rule == "cfg_zero_star":
            v_uncond = v_uncond * optimized_scale(v_cond, v_uncond)
        return v_uncond + scale * (v_cond - v_uncond)

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
