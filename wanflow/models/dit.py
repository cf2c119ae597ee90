"""The Wan diffusion transformer (DiT): patch embedding, N blocks, head, unpatchify. Pure math, no IO.

Module names equal the official checkpoint keys, so official weights load without renaming.

Precision (the reference's islands, declared once in ``FP32_MODULES``): the timestep sinusoid is float64; the time
MLP, the modulation tables and the head run in float32; norms compute their statistics in float32; the residual
stream is float32. Linear layers and attention run in the dtype of the block weights (float32 or bfloat16).

Timesteps: the time MLP runs once per distinct timestep value, never per token, and the modulation is kept per value
((B, K, 6, D) with K = 1 for T2V, 2 for TI2V with an image); each block picks its rows per token only for the
product that uses them, so no (B, L, 6, D) tensor exists. (B,) and ``TokenTimesteps`` inputs need no device sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from wanflow.configs import DiTConfig
from wanflow.models.attention import AttentionFn, attention
from wanflow.models.rope import apply_rope, rope_tables

# The reference's float32 islands: parameters under these names stay float32 when the model is cast to a low-precision
# dtype (``runtime.precision.cast_model``), and the top-level ones get float32 FSDP units (``runtime.fsdp``).
FP32_MODULES = ("time_embedding", "time_projection", "head", "modulation")

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) tables, (L, head_dim / 2) each


@dataclass(frozen=True, eq=False)
class TokenTimesteps:
    """Per-token timesteps in factored form: token l of sample b sees ``values[b, index[b, l]]``.

    The caller knows the distinct values on the host (TI2V with an image: 0 on the frame-0 tokens, t elsewhere), so
    the model never has to look for them on the device. ``dense()`` is the plain (B, L) form the reference takes.
    """

    values: torch.Tensor  # (B, K) timesteps in [0, 1000]
    index: torch.Tensor  # (B, L) int64 in [0, K)

    def dense(self) -> torch.Tensor:
        return torch.gather(self.values, 1, self.index)

    def repeat(self, n: int) -> TokenTimesteps:
        """The timesteps of ``n`` copies of the batch, concatenated (a CFG batch)."""
        return TokenTimesteps(self.values.repeat(n, 1), self.index.repeat(n, 1))


class TimeEmbedding(NamedTuple):
    """The time conditioning of one forward, per distinct timestep value (K of them per sample), float32."""

    e: torch.Tensor  # (B, K, D): drives the head
    e0: torch.Tensor  # (B, K, 6, D): drives the blocks
    index: torch.Tensor | None  # (B, L) row of each token; None when K = 1 (every token alike, broadcast)


def per_token(rows: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """(B, K, ...) rows -> (B, L, ...) by ``index`` (B, L); as they are (broadcast over tokens) when index is None."""
    if index is None:
        return rows
    index = index.view(*index.shape, *[1] * (rows.ndim - 2)).expand(*index.shape, *rows.shape[2:])
    return torch.gather(rows, 1, index)


def factor_timesteps(t: torch.Tensor | TokenTimesteps, seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Timesteps as (values (B, K), index (B, L) or None). Only the plain (B, L) tensor needs a device sync (to find
    its distinct values); (B,) and ``TokenTimesteps`` are free."""
    if isinstance(t, TokenTimesteps):
        if t.values.ndim != 2 or t.index.shape != (t.values.shape[0], seq_len):
            raise ValueError(
                f"TokenTimesteps needs values (B, K) and index (B, {seq_len}), got {tuple(t.values.shape)} and "
                f"{tuple(t.index.shape)}"
            )
        return t.values, t.index
    if t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1):
        return t.reshape(-1, 1), None
    if t.ndim != 2 or t.shape[1] != seq_len:
        raise ValueError(f"timesteps must have shape (B,) or (B, {seq_len}) or be TokenTimesteps, got {tuple(t.shape)}")
    values, index = torch.unique(t, return_inverse=True)  # the reference's form: one sync; prefer TokenTimesteps
    return values.expand(t.shape[0], -1), (index if values.numel() > 1 else None)


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep features ``[cos(t w), sin(t w)]`` with ``w_j = 10000^(-j/half)``, computed in float64: (..., dim)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    args = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    """RMS norm over the last dim; statistics in float32, result cast back before the weight. (``F.rms_norm`` of a
    bf16 input computes in float32 and rounds once: the same values as upcasting first, without two copies.)"""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x (1 + scale) + shift`` in float32, one fused pass over x."""
    return torch.addcmul(shift, x.float(), 1 + scale)


class Attention(nn.Module):
    """Multi-head attention with q/k RMSNorm over the full width; RoPE when tables are given (self-attention).

    ``attend`` is the attention of a call that names none (the cross-attention's): a transform may set another on an
    instance for a while (``runtime.nag``, which reads a context of twice the batch)."""

    attend = staticmethod(attention)

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def project(
        self, x: torch.Tensor, context: torch.Tensor, rope: Rope | None = None
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
        self, x: torch.Tensor, context: torch.Tensor, rope: Rope | None = None, attend: AttentionFn | None = None
    ) -> torch.Tensor:
        return self.o((attend or self.attend)(*self.project(x, context, rope)).flatten(2))


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
        self, x: torch.Tensor, time: TimeEmbedding, context: torch.Tensor, rope: Rope, attend: AttentionFn = attention
    ) -> torch.Tensor:
        # Six (B, K, D) float32 rows, one per timestep value: shift/scale/gate for self-attention, then for the FFN.
        # Each is picked per token only for the product that uses it (a transient (B, L, D), never (B, L, 6, D)).
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + time.e0).unbind(2)
        idx = time.index
        h = modulate(self.norm1(x), per_token(shift_sa, idx), per_token(scale_sa, idx))
        x = torch.addcmul(x, self.self_attn(h, h, rope, attend), per_token(gate_sa, idx))  # x + attn * gate, float32
        x = x + self.cross_attn(self.norm3(x), context)
        h = modulate(self.norm2(x), per_token(shift_ff, idx), per_token(scale_ff, idx))
        return torch.addcmul(x, self.ffn(h.to(self.ffn[0].weight.dtype)), per_token(gate_ff, idx))


class Head(nn.Module):
    """Final norm with its own two-way modulation (driven by the un-projected time embedding) and projection."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, time: TimeEmbedding) -> torch.Tensor:
        shift, scale = (self.modulation.float() + time.e.unsqueeze(2)).unbind(2)  # (B, K, D) each
        h = modulate(self.norm(x), per_token(shift, time.index), per_token(scale, time.index))
        return self.head(h.to(self.head.weight.dtype)).float()


class WholeSequence:
    """How a forward spreads its tokens: here, not at all (one process holds every token). A plan is asked for each
    forward's share (``shard``), splits the tokens, the per-token timesteps and the RoPE rows (``split``), provides the
    self-attention over the whole sequence (``attend``) and brings the head's output back whole (``gather``).
    ``runtime.sequence_parallel`` replaces it with a plan that shards the tokens over ranks; the forward is the same."""

    attend = staticmethod(attention)

    def shard(self, seq_len: int) -> WholeSequence:
        return self

    def split(self, tokens: torch.Tensor, time: TimeEmbedding, rope: Rope) -> tuple[torch.Tensor, TimeEmbedding, Rope]:
        return tokens, time, rope

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        return out


class BlockCache(Protocol):
    """What the forward asks around its block stack (``WanDiT.block_cache``, set by a step cache such as
    ``runtime.step_cache``): ``reuse(tokens)`` returns a residual to add to the tokens instead of running the blocks, or
    None to run them; ``store(tokens, out)`` is handed the blocks' input and output when they ran (the residual is
    ``out - tokens``; a cache that will not reuse it need not compute it)."""

    def reuse(self, tokens: torch.Tensor) -> torch.Tensor | None: ...

    def store(self, tokens: torch.Tensor, out: torch.Tensor) -> None: ...


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
        self.sequence = WholeSequence()  # the token plan; a transform may shard the tokens (runtime.sequence_parallel)
        self.block_cache: BlockCache | None = None  # a step cache may skip the blocks (runtime.step_cache)
        self.riflex = 0  # RIFLEx's frame frequency to lower (models.rope; set by runtime.riflex); 0: the reference's

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | TokenTimesteps,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        skip_blocks: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """x: (B, C, T, H, W) noisy latents; t: timesteps in [0, 1000], (B,), or per token as ``TokenTimesteps`` or a
        plain (B, L) tensor (slower: one device sync); context: (B, Lc, text_dim) text states (zero-padded to
        ``text_len`` here if shorter); y: (B, C_y, T, H, W) conditioning channels appended to x; ``skip_blocks``:
        blocks left out (their input passed on: skip layer guidance's weakened model). Returns the velocity
        (B, out_dim, T, H, W) in float32."""
        x = self._check_inputs(x, y)
        tokens, grid = self.embed_patches(x)
        time = self.embed_time(t, tokens.shape[1])
        context = self.embed_text(context)
        rope = rope_tables(self.cfg.head_dim, grid, self.cfg.rope_theta, tokens.device, self.riflex)
        shard = self.sequence.shard(tokens.shape[1])  # this forward's share of the tokens
        tokens, time, rope = shard.split(tokens, time, rope)
        tokens = self.run_blocks(tokens, time, context, rope, shard.attend, skip_blocks)
        return self.unpatchify(shard.gather(self.head(tokens, time)), grid)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        time: TimeEmbedding,
        context: torch.Tensor,
        rope: Rope,
        attend: AttentionFn,
        skip: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """The block stack over this forward's (B, s, D) tokens (less the ``skip`` blocks), or the residual a
        ``block_cache`` hands back (for the whole stack only)."""
        cache = None if skip else self.block_cache
        residual = None if cache is None else cache.reuse(tokens)
        if residual is not None:
            return tokens + residual
        out = tokens
        for i, block in enumerate(self.blocks):
            if i not in skip:
                out = block(out, time, context, rope, attend)
        if cache is not None:
            cache.store(tokens, out)
        return out

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
        return h.flatten(2).transpose(1, 2).float().contiguous(), grid  # one copy here, not one per norm

    def embed_time(self, t: torch.Tensor | TokenTimesteps, seq_len: int) -> TimeEmbedding:
        """The time MLP and its six-way projection, run on the distinct timestep values only (K per sample)."""
        values, index = factor_timesteps(t, seq_len)
        lin = self.time_embedding[0]
        e = self.time_embedding(sinusoid(values, self.cfg.freq_dim).to(lin.weight.dtype)).float()  # (B, K, D)
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()
        return TimeEmbedding(e, e0.unflatten(-1, (6, self.cfg.dim)), index)

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
