"""The GGML block formats of GGUF files, dequantised with torch on the weights' own device.

A quantised weight is stored as rows of blocks: each block holds ``block`` consecutive weights of a row in ``size``
bytes (scales as float16, then packed integers). Each function below takes the blocks as a (N, size) uint8 tensor
and returns the (N, block) float32 values; the bit layouts are ggml's (``ggml-common.h``), checked in the tests
against the ``gguf`` package's numpy dequantisers on random blocks. QK_K = 256 weights per "K" super-block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

QK_K = 256


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """(N, 1) float32 from the float16 stored at bytes [start, start + 2) of each block."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(N, G, 16k) packed bytes -> (N, G, 32k) values: the low nibbles of a group, then its high nibbles."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(packed: torch.Tensor, count: int, width: int = 1) -> torch.Tensor:
    """(N, B) bytes -> (N, count, B) fields of ``width`` bits: field j of byte b is bits [j w, (j + 1) w)."""
    shifts = torch.arange(0, count * width, width, device=packed.device, dtype=torch.uint8).view(1, count, 1)
    return (packed.unsqueeze(1) >> shifts) & ((1 << width) - 1)


def q8_0(blocks: torch.Tensor) -> torch.Tensor:  # d, then 32 int8
    return _f16(blocks, 0) * blocks[:, 2:].contiguous().view(torch.int8).float()


def q4_0(blocks: torch.Tensor) -> torch.Tensor:  # d, then 16 bytes of 4-bit values offset by 8
    return _f16(blocks, 0) * (_nibbles(blocks[:, 2:]).float() - 8)


def q4_1(blocks: torch.Tensor) -> torch.Tensor:  # d, m, then 16 bytes of 4-bit values
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]).float() + _f16(blocks, 2)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """(N, 4) bytes = one little-endian 32-bit mask -> (N, 32): bit i is the fifth bit of weight i."""
    return _bits(qh, 8).transpose(1, 2).reshape(qh.shape[0], 32)


def q5_0(blocks: torch.Tensor) -> torch.Tensor:  # d, qh (4 bytes), then 16 bytes of low nibbles; offset 16
    q = _nibbles(blocks[:, 6:]) | (_fifth_bits(blocks[:, 2:6]) << 4)
    return _f16(blocks, 0) * (q.float() - 16)


def q5_1(blocks: torch.Tensor) -> torch.Tensor:  # d, m, qh (4 bytes), then 16 bytes of low nibbles
    q = _nibbles(blocks[:, 8:]) | (_fifth_bits(blocks[:, 4:8]) << 4)
    return _f16(blocks, 0) * q.float() + _f16(blocks, 2)


def q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """16 scale bytes (low nibble: scale, high: min, per 16 weights), 64 bytes of 2-bit values, d, dmin."""
    n = blocks.shape[0]
    scales = blocks[:, :16].float()
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    q = _bits(blocks[:, 16:80].reshape(n * 2, 32), 4, 2).reshape(n, 16, 16).float()
    dl = (d * (blocks[:, :16] & 0x0F).float()).unsqueeze(-1)
    ml = (dmin * torch.div(scales, 16, rounding_mode="floor")).unsqueeze(-1)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_scales(packed: torch.Tensor) -> torch.Tensor:
    """(N, 12) bytes -> (N, 16) signed 6-bit scales: low 4 bits from bytes 0-7, high 2 bits from bytes 8-11."""
    n = packed.shape[0]
    low = _bits(packed[:, :8], 2, 4).reshape(n, 16)
    high = _bits(packed[:, 8:], 4, 2).reshape(n, 16)
    return (low | (high << 4)).float() - 32


def q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """32 bytes of high-bit masks, 64 bytes of 2-bit values, 12 bytes of 6-bit scales, d. A value is
    ``low - 4`` where its mask bit is 0, ``low`` where it is 1."""
    n = blocks.shape[0]
    low = _bits(blocks[:, 32:96].reshape(n * 2, 32), 4, 2).reshape(n, 16, 16)
    high = _bits(blocks[:, :32], 8).reshape(n, 16, 16)  # mask bit j of byte b: weight b of the j-th group of 32
    q = low.float() - 4 * (1 - high.float())
    dl = (_f16(blocks, 108) * _q3_scales(blocks[:, 96:108])).unsqueeze(-1)
    return (dl * q).reshape(n, QK_K)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 12) bytes -> 8 six-bit scales and 8 six-bit mins (Q4_K, Q5_K): sub-blocks 0-3 in the low 6 bits of bytes
    0-3 (scales) and 4-7 (mins); sub-blocks 4-7 from the nibbles of bytes 8-11 and the top 2 bits of bytes 0-7."""
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    minimum = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scale.float(), minimum.float()


def _k_affine(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``d scale_j q - dmin min_j`` over the 8 sub-blocks of 32 of a Q4_K / Q5_K super-block."""
    scale, minimum = _k_scale_min(blocks[:, 4:16])
    d = (_f16(blocks, 0) * scale).unsqueeze(-1)
    dm = (_f16(blocks, 2) * minimum).unsqueeze(-1)
    return (d * q.float() - dm).reshape(blocks.shape[0], QK_K)


def q4_k(blocks: torch.Tensor) -> torch.Tensor:  # d, dmin, 12 scale bytes, 128 bytes: 4 groups of 32 packed pairs
    n = blocks.shape[0]
    return _k_affine(blocks, _nibbles(blocks[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32))


def q5_k(blocks: torch.Tensor) -> torch.Tensor:  # as Q4_K, with 32 bytes of fifth bits before the nibbles
    n = blocks.shape[0]
    low = _nibbles(blocks[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = _bits(blocks[:, 16:48], 8)  # (N, 8, 32): bit j of byte b is the fifth bit of weight b of sub-block j
    return _k_affine(blocks, low | (high << 4))


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales (per 16 weights), d; offset 32."""
    n = blocks.shape[0]
    low = _nibbles(blocks[:, :128].reshape(n, 2, 64)).reshape(n, 2, 4, 32)
    high = _bits(blocks[:, 128:192].reshape(n * 2, 32), 4, 2).reshape(n, 2, 4, 32)
    q = ((low | (high << 4)).float() - 32).reshape(n, 16, 16)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    return ((_f16(blocks, 208) * scales).unsqueeze(-1) * q).reshape(n, QK_K)


def f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).float()


def bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).float()


def f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


class BlockFormat(NamedTuple):
    block: int  # weights per block
    size: int  # bytes per block
    dequantize: Callable[[torch.Tensor], torch.Tensor]  # (N, size) uint8 -> (N, block) float32


FORMATS: dict[str, BlockFormat] = {
    "F32": BlockFormat(1, 4, f32),
    "F16": BlockFormat(1, 2, f16),
    "BF16": BlockFormat(1, 2, bf16),
    "Q8_0": BlockFormat(32, 34, q8_0),
    "Q5_1": BlockFormat(32, 24, q5_1),
    "Q5_0": BlockFormat(32, 22, q5_0),
    "Q4_1": BlockFormat(32, 20, q4_1),
    "Q4_0": BlockFormat(32, 18, q4_0),
    "Q6_K": BlockFormat(QK_K, 210, q6_k),
    "Q5_K": BlockFormat(QK_K, 176, q5_k),
    "Q4_K": BlockFormat(QK_K, 144, q4_k),
    "Q3_K": BlockFormat(QK_K, 110, q3_k),
    "Q2_K": BlockFormat(QK_K, 84, q2_k),
}


def bits_per_weight(qtype: str) -> float:
    fmt = FORMATS[qtype]
    return 8 * fmt.size / fmt.block


def stored_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``shape`` stored as ``qtype`` (rows of whole blocks)."""
    fmt = FORMATS[qtype]
    if shape[-1] % fmt.block:
        raise ValueError(f"a {qtype} row holds whole blocks of {fmt.block} weights; the last dim is {shape[-1]}")
    return math.prod(shape) // fmt.block * fmt.size


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The ``shape`` tensor stored as ``qtype`` blocks in the uint8 tensor ``raw``, in ``dtype``."""
    fmt = FORMATS[qtype]
    blocks = raw.reshape(-1, fmt.size)
    return fmt.dequantize(blocks).reshape(shape).to(dtype)
