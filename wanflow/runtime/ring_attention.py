"""Ring attention, alone or under Ulysses: exact sequence-parallel self-attention for any group size.

Ulysses (``sequence_parallel``) trades sequence shards for head shards, so it needs the P ranks of a group to divide
the N heads. When they do not, Ulysses runs over ``u = gcd(N, P)`` consecutive ranks (every head count splits over
it) and a ring over the ``r = P / u`` blocks such groups form: ranks ``i, i + u, i + 2u, ...`` hold the same heads of
different stretches of the sequence and pass their keys and values around (``ring_attention``). ``u = 1`` is a pure
ring. E.g. 40 heads on 16 ranks: Ulysses 8 x ring 2; 24 heads on 16: 8 x 2; 2 heads on 4: 2 x 2.

Each ring step attends this rank's queries to one block of keys with ``attention_lse`` (which also returns the
log-sum-exp of the scores), and merges the partial outputs in float32 (online softmax), so the result is the full
attention up to rounding. Padding keys (positions >= the true sequence length, all at the end) are cut off their
block, not masked. The next block's transfer runs while the current one is attended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from wanflow.models.attention import attention_lse
from wanflow.runtime.head_exchange import heads_to_seq, seq_to_heads


def attention_layout(num_heads: int, ranks: int) -> tuple[int, int]:
    """(Ulysses size, ring size) for ``num_heads`` heads on ``ranks`` sequence-parallel ranks."""
    ulysses = math.gcd(num_heads, ranks)
    return ulysses, ranks // ulysses


def merge(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-weighted union of two partial attentions over disjoint keys: ``out`` (B, L, H, d) in the dtype of
    ``lse`` (B, L, H), and one block's. ``out + w (block - out)`` with ``w = exp(block_lse - new_lse)``."""
    weight = torch.sigmoid(block_lse - lse)[..., None]  # = exp(block_lse) / (exp(lse) + exp(block_lse))
    return out + weight * (block_out.to(out.dtype) - out), lse - F.logsigmoid(lse - block_lse)


def _pass_on(kv: torch.Tensor, group: dist.ProcessGroup, to: int, source: int) -> tuple[list, torch.Tensor]:
    """Start sending ``kv`` to group rank ``to`` and receiving the same shape from ``source``."""
    incoming = torch.empty_like(kv)
    ops = [
        dist.P2POp(dist.isend, kv, group=group, group_peer=to),
        dist.P2POp(dist.irecv, incoming, group=group, group_peer=source),
    ]
    return dist.batch_isend_irecv(ops), incoming


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_len: int,
    group: dist.ProcessGroup,
    ring: Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention of this rank's (B, Lq, H, d) queries over the keys of every rank of ``ring`` (group ranks, default
    all of ``group``, in sequence order): this rank's ``k``, ``v`` (B, Lb, H, d) are block ``ring.index(rank)`` of
    the sequence, positions ``[j Lb, (j + 1) Lb)``; keys at positions >= ``key_len`` are padding."""
    ring = list(range(dist.get_world_size(group))) if ring is None else list(ring)
    size, pos, block_len = len(ring), ring.index(dist.get_rank(group)), k.shape[1]
    kv = torch.stack([k, v]).contiguous()
    out = lse = None
    for step in range(size):
        if step + 1 < size:  # the next block travels while this one is attended
            requests, incoming = _pass_on(kv, group, ring[(pos + 1) % size], ring[(pos - 1) % size])
        valid = min(max(key_len - (pos - step) % size * block_len, 0), block_len)
        if valid:
            block_out, block_lse = attention_lse(q, kv[0, :, :valid], kv[1, :, :valid])
            if out is None:
                out, lse = block_out.to(block_lse.dtype), block_lse
            else:
                out, lse = merge(out, lse, block_out, block_lse)
        if step + 1 < size:
            for request in requests:
                request.wait()
            kv = incoming
    return out.to(q.dtype)


def ulysses_ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: int, group: dist.ProcessGroup
) -> torch.Tensor:
    """Self-attention of (B, s, N, d) sequence shards (rank i holds tokens ``[i s, (i + 1) s)``, the first
    ``seq_len`` real) over the whole sequence: Ulysses x ring as ``attention_layout`` chooses. Returns (B, s, N, d)."""
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    u, r = attention_layout(q.shape[2], p)
    if u > 1:
        q, k, v = (seq_to_heads(a, group, u) for a in (q, k, v))  # (B, u s, N / u, d)
    out = ring_attention(q, k, v, seq_len, group, ring=[rank % u + j * u for j in range(r)])
    return heads_to_seq(out, group, u) if u > 1 else out
