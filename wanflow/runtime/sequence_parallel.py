"""Ulysses sequence parallelism for the Wan DiT, as a transform applied from outside: ``parallelize_sequence``.

Each of the P ranks of a group holds ``s = S / P`` consecutive tokens (S = the token count padded up to a multiple of
P). Everything in a block is token-local except self-attention, where an all-to-all turns (B, s, N, d) sequence
shards into (B, S, N/P, d) head shards, attention runs over the full sequence with the padding keys cut off, and a
second all-to-all turns the result back. When P does not divide the head count N, Ulysses runs over gcd(N, P)
ranks and a ring over the rest (``ring_attention``). The head runs on the shard; the velocity tokens are gathered
before unpatchify, so every rank returns the full velocity.

The transform changes no module and no forward: it gives the model a token plan (``WanDiT.sequence``, see
``models.dit.WholeSequence``) that splits the tokens, attends across the ranks and gathers the output.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule

from wanflow.models.attention import attention
from wanflow.models.dit import Rope, TimeEmbedding, WanDiT
from wanflow.runtime.distributed import as_group
from wanflow.runtime.head_exchange import heads_to_seq, seq_to_heads
from wanflow.runtime.ring_attention import ulysses_ring_attention


def _pad_rows(x: torch.Tensor, total: int, dim: int, value: float = 0.0) -> torch.Tensor:
    pad = total - x.shape[dim]
    if pad == 0:
        return x
    spec = [0, 0] * (x.ndim - dim - 1) + [0, pad]
    return F.pad(x, spec, value=value)


class UlyssesSequence:
    """The token plan of a model sharded over ``group``: each forward's share is a ``UlyssesShard``."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group

    def shard(self, seq_len: int) -> UlyssesShard:
        return UlyssesShard(self.group, seq_len)


class UlyssesShard:
    """This rank's rows ``[r s, (r + 1) s)`` of one forward's tokens, padded to ``s P``; padding rows rotate by the
    identity (cos 1, sin 0), are cut off as keys and dropped from the output."""

    def __init__(self, group: dist.ProcessGroup, seq_len: int):
        p, rank = dist.get_world_size(group), dist.get_rank(group)
        if seq_len < p:
            raise ValueError(
                f"sequence parallelism over {p} ranks needs at least {p} tokens, the input has {seq_len}; "
                f"use a larger video or a smaller ulysses_size"
            )
        self.group, self.seq_len, self.ranks = group, seq_len, p
        self.rows = -(-seq_len // p)  # tokens per rank
        self.local = slice(rank * self.rows, (rank + 1) * self.rows)

    def _mine(self, a: torch.Tensor, dim: int = 1, value: float = 0.0) -> torch.Tensor:
        index = (slice(None),) * dim + (self.local,)
        return _pad_rows(a, self.rows * self.ranks, dim, value)[index]

    def split(self, tokens: torch.Tensor, time: TimeEmbedding, rope: Rope) -> tuple[torch.Tensor, TimeEmbedding, Rope]:
        if time.index is not None:  # per-token timesteps (TI2V with an image): the tables stay whole, the rows shard
            time = time._replace(index=self._mine(time.index))
        cos, sin = rope
        return self._mine(tokens), time, (self._mine(cos, 0, 1.0), self._mine(sin, 0))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Self-attention of this rank's (B, s, N, d) rows over the whole sequence."""
        if q.shape[2] % self.ranks:  # the heads do not split over the group: add a ring
            return ulysses_ring_attention(q, k, v, self.seq_len, self.group)
        q, k, v = (seq_to_heads(a, self.group) for a in (q, k, v))  # (B, S, N/P, d)
        return heads_to_seq(attention(q, k, v, key_len=self.seq_len), self.group)  # (B, s, N, d)

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """Every rank's (B, s, C) head output -> the whole (B, L, C)."""
        gathered = [torch.empty_like(out) for _ in range(self.ranks)]
        dist.all_gather(gathered, out.contiguous(), group=self.group)
        return torch.cat(gathered, dim=1)[:, : self.seq_len]


def parallelize_sequence(model: WanDiT, group: dist.ProcessGroup | DeviceMesh | None = None) -> WanDiT:
    """Shard ``model``'s tokens over ``group`` (default: the whole world), in place; returns ``model``. Apply it
    before FSDP (``shard_dit(parallelize_sequence(model, group), mesh)``), so that every transform sees a plain
    model first."""
    if isinstance(model, FSDPModule):
        raise ValueError("apply parallelize_sequence before FSDP: shard_dit(parallelize_sequence(model, group), mesh)")
    if not isinstance(model, WanDiT):
        raise ValueError(f"parallelize_sequence needs a WanDiT, got {type(model).__name__}")
    model.sequence = UlyssesSequence(as_group(group))
    return model
