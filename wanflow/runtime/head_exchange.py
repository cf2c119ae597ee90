"""The Ulysses all-to-alls: sequence shards <-> head shards, over a whole group or over blocks of its ranks.

With ``size`` ranks taking part (default: the whole group; ``ring_attention`` uses blocks of ``size`` consecutive
ranks), rank i of a block holds tokens ``[i s, (i + 1) s)`` of the block's stretch of the sequence with every head
before the exchange, and the whole stretch with its ``1 / size`` slice of the heads after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _exchange(send: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """All-to-all inside this rank's block of ``size`` consecutive ranks: chunk i of ``send`` (size, ...) goes to the
    block's i-th rank; chunk i of the result came from it. One collective over the group, zero rows elsewhere."""
    first = dist.get_rank(group) // size * size
    splits = [1 if first <= i < first + size else 0 for i in range(dist.get_world_size(group))]
    send = send.contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, splits, splits, group=group)
    return recv


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup, size: int | None = None) -> torch.Tensor:
    """(B, s, N, d) sequence shard -> (B, size * s, N / size, d): the block's tokens, this rank's slice of heads."""
    size = size or dist.get_world_size(group)
    b, s, n, d = x.shape
    recv = _exchange(x.reshape(b, s, size, n // size, d).permute(2, 0, 1, 3, 4), group, size)  # by sequence chunk
    return recv.permute(1, 0, 2, 3, 4).reshape(b, size * s, n // size, d)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup, size: int | None = None) -> torch.Tensor:
    """(B, size * s, h, d) head shard -> (B, s, size * h, d): this rank's tokens, all heads."""
    size = size or dist.get_world_size(group)
    b, block, h, d = x.shape
    recv = _exchange(x.reshape(b, size, block // size, h, d).permute(1, 0, 2, 3, 4), group, size)  # by head chunk
    return recv.permute(1, 2, 0, 3, 4).reshape(b, block // size, size * h, d)
