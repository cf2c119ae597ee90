"""Ulysses sequence parallelism for the Wan DiT, as a transform applied from outside: ``parallelize_sequence``.

Each of the P ranks of a group holds ``s = S / P`` consecutive tokens (S = the token count padded up to a multiple of
P). Everything in a block is token-local except self-attention, where an all-to-all turns (B, s, N, d) sequence
shards into (B, S, N/P, d) head shards, attention runs over the full sequence with the padding keys masked, and a
second all-to-all turns the result back. When P does not divide the head count N, Ulysses runs over gcd(N, P)
ranks and a ring over the rest (``ring_attention``). The head runs on the shard; the velocity tokens are gathered
before unpatchify, so every rank returns the full velocity.

The plain ``WanDiT`` code is untouched. The transform swaps each block's ``self_attn`` for a ``UlyssesAttention``
that shares its parameters (same state-dict keys) and behaves exactly as the plain module when given plain RoPE
tables; it runs sharded only when ``SequenceParallelDiT`` passes a ``SequenceShard`` through the block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule

from wanflow.models.attention import attention
from wanflow.models.dit import Attention, WanDiT
from wanflow.models.rope import rope_tables
from wanflow.runtime.distributed import as_group
from wanflow.runtime.head_exchange import heads_to_seq, seq_to_heads
from wanflow.runtime.ring_attention import ulysses_ring_attention


class SequenceShard(NamedTuple):
    """What a sharded self-attention needs: this rank's RoPE rows and the true (unpadded) sequence length."""

    cos: torch.Tensor  # (s, d/2)
    sin: torch.Tensor  # (s, d/2)
    seq_len: int  # true token count L; keys at positions >= L are padding
    group: dist.ProcessGroup


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Attention over (B, S, N, d) where only the first ``seq_len`` keys are real; no mask when nothing is padded."""
    if k.shape[1] == seq_len:
        return attention(q, k, v)
    keep = (torch.arange(k.shape[1], device=k.device) < seq_len)[None, None, None]  # (1, 1, 1, S): keys
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keep)
    return out.transpose(1, 2)


class UlyssesAttention(Attention):
    """A DiT self-attention sharing the parameters of a plain one; sharded when given a ``SequenceShard``."""

    def __init__(self, plain: Attention):
        nn.Module.__init__(self)
        self.num_heads = plain.num_heads
        for name, child in plain.named_children():  # same children, same state-dict keys
            self.add_module(name, child)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, rope: tuple[torch.Tensor, ...] | SequenceShard | None = None
    ) -> torch.Tensor:
        if not isinstance(rope, SequenceShard):
            return super().forward(x, context, rope)
        # Projections, norms and RoPE are token-local: the plain module's math on this rank's tokens.
        q, k, v = self.project(x, x, (rope.cos, rope.sin))  # (B, s, N, d)
        if self.num_heads % dist.get_world_size(rope.group):  # the heads do not split over the group: add a ring
            return self.o(ulysses_ring_attention(q, k, v, rope.seq_len, rope.group).flatten(2))
        q, k, v = (seq_to_heads(a, rope.group) for a in (q, k, v))  # (B, S, N/P, d)
        out = heads_to_seq(masked_attention(q, k, v, rope.seq_len), rope.group)  # (B, s, N, d)
        return self.o(out.flatten(2))


def _pad_rows(x: torch.Tensor, total: int, dim: int, value: float = 0.0) -> torch.Tensor:
    pad = total - x.shape[dim]
    if pad == 0:
        return x
    spec = [0, 0] * (x.ndim - dim - 1) + [0, pad]
    return F.pad(x, spec, value=value)


class SequenceParallelDiT(nn.Module):
    """``WanDiT`` with its tokens sharded over ``group``; same call signature, same full velocity on every rank."""

    def __init__(self, model: WanDiT, group: dist.ProcessGroup):
        super().__init__()
        self.model = model
        self.group = group
        self.cfg = model.cfg

    @property
    def text_embedding(self) -> nn.Module:  # the pipeline reads the context dtype from it
        return self.model.text_embedding

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        model, group = self.model, self.group
        p, rank = dist.get_world_size(group), dist.get_rank(group)
        x = model._check_inputs(x, y)
        tokens, grid = model.embed_patches(x)
        seq_len = tokens.shape[1]
        if seq_len < p:
            raise ValueError(
                f"sequence parallelism over {p} ranks needs at least {p} tokens, the input has {seq_len}; "
                f"use a larger video or a smaller ulysses_size"
            )
        s = -(-seq_len // p)  # tokens per rank
        time = model.embed_time(t, seq_len)
        context = model.embed_text(context)
        cos, sin = rope_tables(self.cfg.head_dim, grid, self.cfg.rope_theta, device=tokens.device)
        local = slice(rank * s, (rank + 1) * s)

        def shard(a: torch.Tensor, value: float = 0.0) -> torch.Tensor:  # rows [r s, (r+1) s) of the padded dim 1
            return _pad_rows(a, s * p, 1, value)[:, local]

        tokens = shard(tokens)
        if time.index is not None:  # per-token timesteps (TI2V with an image): the tables stay whole, tokens shard
            time = time._replace(index=shard(time.index))
        # Padding rows rotate by the identity (cos 1, sin 0); they are masked as keys and dropped as outputs.
        rope = SequenceShard(_pad_rows(cos, s * p, 0, 1.0)[local], _pad_rows(sin, s * p, 0)[local], seq_len, group)
        for block in model.blocks:
            tokens = block(tokens, time, context, rope)
        out = model.head(tokens, time)  # (B, s, patch * C) float32
        gathered = [torch.empty_like(out) for _ in range(p)]
        dist.all_gather(gathered, out.contiguous(), group=group)
        return model.unpatchify(torch.cat(gathered, dim=1)[:, :seq_len], grid)


def parallelize_sequence(model: WanDiT, group: dist.ProcessGroup | DeviceMesh | None = None) -> SequenceParallelDiT:
    """Shard ``model``'s tokens over ``group`` (default: the whole world). The model's self-attention modules are
    swapped for ``UlyssesAttention`` in place (parameters shared, serial calls of ``model`` unchanged)."""
    if isinstance(model, FSDPModule):
        raise ValueError("apply parallelize_sequence before FSDP: shard_dit(parallelize_sequence(model, group), mesh)")
    group = as_group(group)
    for block in model.blocks:
        if not isinstance(block.self_attn, UlyssesAttention):
            block.self_attn = UlyssesAttention(block.self_attn)
    return SequenceParallelDiT(model, group)
