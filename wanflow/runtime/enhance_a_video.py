"""Enhance-A-Video (Luo et al. 2025, arXiv 2502.07508; NUS-HPC-AI-Lab/Enhance-A-Video) as KJNodes' "WanVideo Enhance
A Video (native)" node runs it on ComfyUI's Wan: in every block the self-attention's output is multiplied by one number
that grows with how much each token's frames attend to each other.

For a forward of T latent frames, the block's queries and keys after RoPE, (B, T*S, N, d), are read per spatial
position as T x T attention maps (softmax of ``q k^T / sqrt(d)`` over the frames, float32); the mean of their
off-diagonal entries over every map, position, head and row of the batch, times ``T + weight``, at least 1, scales the
self-attention's output (after its output projection). One number per block and forward: a CFG batch shares it (as
ComfyUI's batched passes do).

``EnhanceAVideo(weight)`` is a step hook: from its first step, each expert's token plan (``WanDiT.sequence``) hands its
self-attentions an attention that also computes the number, and a forward hook on each block's self-attention applies
it; the run's end puts both back. Not with sequence parallelism (each rank's attention sees part of the heads).
"""

from __future__ import annotations

import torch
from torch import nn

from wanflow.models.attention import AttentionFn, attention
from wanflow.models.dit import WanDiT, WholeSequence
from wanflow.sampling.hooks import Step, StepHook, Velocity


def feta_score(q: torch.Tensor, k: torch.Tensor, frames: int, weight: float) -> torch.Tensor:
    """The scale of one self-attention output from its (B, T*S, N, d) queries and keys after RoPE: a 0-d float32."""
    b, length, heads, d = q.shape
    spatial = length // frames

    def per_position(x: torch.Tensor) -> torch.Tensor:  # (B, T*S, N, d) -> (B*S, N, T, d)
        return x.view(b, frames, spatial, heads, d).permute(0, 2, 3, 1, 4).reshape(b * spatial, heads, frames, d)

    maps = ((per_position(q) * d**-0.5) @ per_position(k).transpose(-2, -1)).to(torch.float32).softmax(dim=-1)
    maps = maps.reshape(-1, frames, frames)
    diagonal = torch.eye(frames, device=maps.device).bool().unsqueeze(0).expand(maps.shape[0], -1, -1)
    off_diagonal = maps.masked_fill(diagonal, 0).sum(dim=(1, 2)) / (frames * frames - frames)
    return (off_diagonal.mean() * (frames + weight)).clamp(min=1)


class Scores:
    """The number of the self-attention that ran last (``attend``), taken by its forward hook (``apply``)."""

    def __init__(self, weight: float):
        self.weight, self.frames, self.score = weight, 1, None

    def attention(self, attend: AttentionFn) -> AttentionFn:
        def scored(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.score = feta_score(q, k, self.frames, self.weight)
            return attend(q, k, v)

        return scored

    def apply(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        score, self.score = self.score, None
        return out if score is None else out * score


class ScoredSequence(WholeSequence):
    """The whole-sequence token plan, its self-attention also recording Enhance-A-Video's number."""

    def __init__(self, scores: Scores):
        self.attend = scores.attention(attention)


def check_whole(model: nn.Module) -> None:
    """Enhance-A-Video reads every head of the whole sequence: not a DiT whose tokens are spread over ranks."""
    for dit in model.modules():
        if isinstance(dit, WanDiT) and type(dit.sequence) not in (WholeSequence, ScoredSequence):
            raise ValueError("Enhance-A-Video with sequence parallelism: not run (a rank sees part of the heads)")


class EnhanceAVideo(StepHook):
    def __init__(self, weight: float):
        self.scores = Scores(weight)
        self.patch_frames = 1  # the experts' patch along the frames (read from them at the first step)
        self._set: list[tuple[WanDiT, object, list]] = []  # (an expert's DiT, its plan, its hooks' handles)

    def before(self, step: Step, model: nn.Module) -> None:
        for dit in model.modules():  # (through any wrapper: compiled, offloaded)
            if not isinstance(dit, WanDiT) or isinstance(dit.sequence, ScoredSequence):
                continue
            check_whole(dit)
            self.patch_frames = dit.cfg.patch_size[0]
            handles = [block.self_attn.register_forward_hook(self.scores.apply) for block in dit.blocks]
            self._set.append((dit, dit.sequence, handles))
            dit.sequence = ScoredSequence(self.scores)

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        def scored(model, latents, t, cond, scale):
            self.scores.frames = latents.shape[2] // self.patch_frames  # (the latent frames: KJNodes' T)
            return velocity(model, latents, t, cond, scale)

        return scored

    def end(self) -> None:
        for dit, sequence, handles in reversed(self._set):
            dit.sequence = sequence
            for handle in handles:
                handle.remove()
        self._set.clear()
