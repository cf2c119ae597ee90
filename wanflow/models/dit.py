"""The Wan diffusion transformer (DiT): patch embedding, N blocks, head, unpatchify. Pure math, no IO.

Module names equal the official checkpoint keys, so official weights load without renaming.

Precision (the reference's islands, declared once in ``FP32_MODULES``): the timestep sinusoid is float64; the time
MLP, the modulation tables and the head run in float32; norms compute their statistics in float32; the residual
stream is float32. Linear layers and attention run in the dtype of the block weights (float32 or bfloat16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wanflow.configs import DiTConfig
from wanflow.models.attention import attention
from wanflow.models.rope import apply_rope, rope_tables

# Parameters that stay float32 when the model is cast to a low-precision dtype.
FP32_MODULES = ("time_embedding", "time_projection", "head", "modulation")


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep features ``[cos(t w), sin(t w)]`` with ``w_j = 10000^(-j/half)``, computed in float64: (..., dim)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    args = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    """RMS norm over the last dim; statistics in float32, result cast back before the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.float() * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention with q/k RMSNorm over the full width; RoPE when tables are given (self-attention)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def project(
        self, x: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token-local part: q from ``x``, k and v from ``context``, normed and rotated; each (B, L, N, d)."""
        dtype = self.q.weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q.to(dtype), k.to(dtype), v

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.o(attention(*self.project(x, context, rope)).flatten(2))


class Block(nn.Module):
    """Self-attention and FFN with six-way per-token modulation; cross-attention ungated after an affine norm."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(
        self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        # e0: (B, L or 1, 6, D) float32; order: shift/scale/gate for self-attention, then for the FFN.
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + e0).unbind(2)
        h = modulate(self.norm1(x), shift_sa, scale_sa)
        x = x + self.self_attn(h, h, rope) * gate_sa
        x = x + self.cross_attn(self.norm3(x), context)
        h = modulate(self.norm2(x), shift_ff, scale_ff)
        return x + self.ffn(h.to(self.ffn[0].weight.dtype)) * gate_ff


class Head(nn.Module):
    """Final norm with its own two-way modulation (driven by the un-projected time embedding) and projection."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)  # e: (B, L or 1, D)
        h = modulate(self.norm(x), shift, scale)
        return self.head(h.to(self.head.weight.dtype)).float()


class WanDiT(nn.Module):
    """Velocity model ``v(x_t, t, text[, y])`` for every Wan 2.2 variant (t2v / i2v / ti2v)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, T, H, W) noisy latents; t: (B,) or (B, L) timesteps in [0, 1000]; context: (B, Lc, text_dim)
        text states (zero-padded to ``text_len`` here if shorter); y: (B, C_y, T, H, W) conditioning channels
        appended to x. Returns the velocity (B, out_dim, T, H, W) in float32."""
        x = self._check_inputs(x, y)
        tokens, grid = self.embed_patches(x)
        e, e0 = self.embed_time(t, tokens.shape[1])
        context = self.embed_text(context)
        rope = rope_tables(self.cfg.head_dim, grid, self.cfg.rope_theta, device=tokens.device)
        for block in self.blocks:
            tokens = block(tokens, e0, context, rope)
        return self.unpatchify(self.head(tokens, e), grid)

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        if x.ndim != 5 or x.shape[1] != self.cfg.in_dim:
            raise ValueError(
                f"DiT expects (B, {self.cfg.in_dim}, T, H, W) input (latents + conditioning), got {tuple(x.shape)}"
            )
        pt, ph, pw = self.cfg.patch_size
        if x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch {self.cfg.patch_size}")
        return x

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, T, H, W) -> float32 tokens (B, L, D) in raster order (frame, row, column), and the token grid."""
        h = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        grid = (h.shape[2], h.shape[3], h.shape[4])
        return h.flatten(2).transpose(1, 2).float(), grid

    def embed_time(self, t: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding e (B, L or 1, D) and its six-way projection e0 (B, L or 1, 6, D), float32.

        The MLP runs once per distinct timestep value (one for T2V, two for TI2V with an image), not per token.
        """
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[1] not in (1, seq_len):
            raise ValueError(f"timesteps must have shape (B,) or (B, {seq_len}), got {tuple(t.shape)}")
        values, index = torch.unique(t, return_inverse=True)
        lin = self.time_embedding[0]
        e = self.time_embedding(sinusoid(values, self.cfg.freq_dim).to(lin.weight.dtype)).float()
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()
        return e[index], e0[index].unflatten(-1, (6, self.cfg.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        pad = self.cfg.text_len - context.shape[1]
        if pad > 0:
            context = F.pad(context, (0, 0, 0, pad))
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, L, pt*ph*pw*C) with channel fastest -> (B, C, T, H, W)."""
        pt, ph, pw = self.cfg.patch_size
        f, h, w = grid
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)
