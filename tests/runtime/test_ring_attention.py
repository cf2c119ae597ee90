"""Ring attention's single-process parts: the layout, block attention with its log-sum-exp, the online-softmax merge.
Across gloo processes (``test_distributed.py``, check ``ring``): sharded Ulysses x ring attention == full attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from wanflow.models.attention import attention_lse as block_attention
from wanflow.models.attention import math_attention
from wanflow.runtime.ring_attention import attention_layout, merge


def qkv(dtype: torch.dtype, lq: int = 9, lk: int = 40) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, n, 3, 16, generator=gen).to(dtype) for n in (lq, lk, lk))  # (B, L, H, d)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize(
    ("heads", "ranks", "layout"),
    [(40, 8, (8, 1)), (40, 16, (8, 2)), (24, 16, (8, 2)), (2, 4, (2, 2)), (3, 2, (1, 2)), (40, 3, (1, 3))],
)
def test_layout_is_ulysses_over_the_common_divisor_then_a_ring(heads, ranks, layout):
    assert attention_layout(heads, ranks) == layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_attention_returns_the_log_sum_exp(dtype):
    q, k, v = qkv(dtype)
    out, lse = block_attention(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, k) / math.sqrt(q.shape[-1])
    assert lse.dtype == torch.promote_types(dtype, torch.float32) and lse.shape == (2, 9, 3)
    assert (lse - scores.logsumexp(-1)).abs().max().item() <= (1e-5 if dtype == torch.float32 else 1e-12)
    assert (out - full_attention(q, k, v)).abs().max().item() <= (1e-6 if dtype == torch.float32 else 1e-12)


def test_math_attention_matches_the_kernel():
    q, k, v = (a.transpose(1, 2) for a in qkv(torch.float64))
    out, lse = math_attention(q, k, v)
    ref_out, ref_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    assert (out - ref_out).abs().max().item() <= 1e-12 and (lse - ref_lse).abs().max().item() <= 1e-12


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_merged_blocks_are_the_full_attention(dtype, tol):
    q, k, v = qkv(dtype)
    out = lse = None
    for block in (slice(0, 13), slice(13, 14), slice(14, 40)):  # uneven blocks, one of a single key
        block_out, block_lse = block_attention(q, k[:, block], v[:, block])
        out, lse = (block_out.to(block_lse.dtype), block_lse) if out is None else merge(out, lse, block_out, block_lse)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, k) / math.sqrt(q.shape[-1])
    assert (out - full_attention(q, k, v)).abs().max().item() <= tol
    assert (lse - scores.logsumexp(-1)).abs().max().item() <= 10 * tol
