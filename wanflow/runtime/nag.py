"""Normalized attention guidance (NAG; Chen et al. 2025, arXiv 2505.21179): the negative prompt acting inside the
cross-attention of the prompt's own pass, so that it works where classifier-free guidance cannot: at guidance 1,
the few-step runs of the distillation LoRAs (Lightning, lightx2v), where no unconditional pass is made.

In every block the cross-attention reads the prompt's states and NAG's negative states with the same queries, giving
``Z+`` and ``Z-`` (B, L, C), heads flattened. NAG extrapolates away from the negative, ``Z~ = phi Z+ - (phi - 1) Z-``,
caps each token's L1 norm at ``tau`` times that of ``Z+`` (``Z^ = Z~ tau |Z+| / |Z~|`` where the ratio exceeds
``tau``) and blends, ``Z = alpha Z^ + (1 - alpha) Z+``; then the output projection. With classifier-free guidance on
as well, the conditional pass is guided this way and the unconditional one runs as without NAG (as the authors'
pipeline does); the two passes then run one after the other, not as one batch (their contexts differ in batch).

``Nag(settings)`` is a step hook: it sets the cross-attention of the experts the run uses to ``nag_attention`` and
puts theirs back when the run ends. The states reach the DiT as one context of twice the batch, the prompt's then the
negative's (``Conditioning.positive``); a pass whose context has the batch of its queries attends as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wanflow.models.attention import AttentionFn, attention
from wanflow.sampling.hooks import Step, StepHook


@dataclass(frozen=True)
class NagSettings:
    """NAG's three numbers (the authors' names and defaults) and the negative prompt it pushes away from."""

    scale: float  # phi > 1: how far from the negative (1: off)
    tau: float = 2.5  # the cap on the norm ratio
    alpha: float = 0.25  # the share of the guided output in the blend
    negative_prompt: str | None = None  # None: the run's negative prompt (its states, encoded or given as embeds)

    def __post_init__(self):
        if not all(math.isfinite(x) for x in (self.scale, self.tau, self.alpha)):
            raise ValueError(f"NAG's numbers must be finite, got {self.scale}, {self.tau}, {self.alpha}")
        if not self.scale > 1.0:
            raise ValueError(f"nag_scale above 1 turns NAG on (1: off), got {self.scale!r}")
        if not self.tau > 0.0:
            raise ValueError(f"nag_tau is a norm ratio above 0 (2.5 by default), got {self.tau!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nag_alpha is a blend weight in [0, 1] (0.25 by default), got {self.alpha!r}")

    def metadata(self, run_negative: str) -> dict[str, object]:
        negative = run_negative if self.negative_prompt is None else self.negative_prompt
        return {"scale": self.scale, "tau": self.tau, "alpha": self.alpha, "negative_prompt": negative}


def guide(positive: torch.Tensor, negative: torch.Tensor, settings: NagSettings) -> torch.Tensor:
    """NAG's output from the cross-attention outputs (..., C) of the prompt and of the negative prompt."""
    phi, tau = settings.scale, settings.tau
    guided = positive * phi - negative * (phi - 1)
    norm_pos = positive.norm(p=1, dim=-1, keepdim=True)
    norm_guided = guided.norm(p=1, dim=-1, keepdim=True)
    ratio = torch.nan_to_num(norm_guided / norm_pos, nan=10.0)  # 0 / 0: capped (the authors' value)
    capped = guided / (norm_guided + 1e-7) * norm_pos * tau
    guided = torch.where(ratio > tau, capped, guided)
    return guided * settings.alpha + positive * (1 - settings.alpha)


def nag_attention(settings: NagSettings, attend: AttentionFn = attention) -> AttentionFn:
    """A cross-attention over (B, L, N, d) queries and keys and values of batch 2B (the prompt's, then the negative's)
    that returns NAG's (B, L, N, d); keys of batch B attend as ``attend`` does."""

    def nag(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = q.shape[0]
        if k.shape[0] == b:  # a pass without the negative states (classifier-free guidance's unconditional one)
            return attend(q, k, v)
        if k.shape[0] != 2 * b:
            raise ValueError(f"NAG reads a context of twice the batch ({2 * b}), got {k.shape[0]}")
        k_pos, k_neg = k.chunk(2)
        v_pos, v_neg = v.chunk(2)
        positive, negative = attend(q, k_pos, v_pos), attend(q, k_neg, v_neg)
        return guide(positive.flatten(2), negative.flatten(2), settings).view_as(positive)

    return nag


class Nag(StepHook):
    """NAG for one run: each expert's cross-attention is ``nag_attention`` from its first step to the run's end."""

    def __init__(self, settings: NagSettings):
        self.attend = nag_attention(settings)
        self._set: list[tuple[nn.Module, object]] = []  # (cross-attention, the ``attend`` it had on the instance)
        self._models: set[int] = set()  # the experts already set this run

    def before(self, step: Step, model: nn.Module) -> None:
        if id(model) in self._models:
            return
        self._models.add(id(model))
        for name, module in model.named_modules():  # (through any wrapper a block is in)
            if name.rpartition(".")[2] == "cross_attn" and module.__dict__.get("attend") is not self.attend:
                self._set.append((module, module.__dict__.get("attend")))
                module.attend = self.attend

    def end(self) -> None:
        for module, previous in reversed(self._set):
            if previous is None:
                del module.attend
            else:
                module.attend = previous
        self._set.clear()
        self._models.clear()
