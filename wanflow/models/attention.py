"""The one attention entry point of the package: the DiT, Ulysses, ring attention and the VAE all call it.

Layout everywhere: (B, L, heads, head_dim). Softmax scale 1/sqrt(head_dim), non-causal (the Wan DiT attends over all
tokens of a sample and over all 512 zero-padded text positions). ``key_len`` marks the keys past it as padding (the
sequence-parallel shards pad the sequence to a multiple of the ranks): they are cut off, not masked, so every backend
takes them. ``attention_lse`` also returns the log-sum-exp of the scores, which ring attention merges blocks with.

The backend is chosen once per (device, dtype, head size) and logged: FlashAttention 3 or 2 on a GPU in half precision
when installed and the head fits their kernels, PyTorch SDPA otherwise. Pass ``backend=`` to choose it explicitly, or
set ``WANFLOW_ATTENTION`` (read at the first choice) for a whole process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
FLASH_MAX_HEAD_DIM = 256  # the flash kernels' largest head (the VAE's single head is wider)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func  # FlashAttention 3 (Hopper)

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # older FA3 releases return (out, lse)


def _flash2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)


BACKENDS: dict[str, AttentionFn] = {"sdpa": _sdpa, "flash3": _flash3, "flash2": _flash2}
_MODULES = {"flash3": "flash_attn_interface", "flash2": "flash_attn"}
ENV = "WANFLOW_ATTENTION"


def available_backends() -> list[str]:
    """Backends importable here (flash kernels also need a CUDA device at call time)."""
    return ["sdpa"] + [name for name, mod in _MODULES.items() if importlib.util.find_spec(mod) is not None]


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return name


@functools.cache
def _backend_for(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    name = os.environ.get(ENV) or "sdpa"
    if ENV not in os.environ and device_type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if head_dim <= FLASH_MAX_HEAD_DIM:
            name = next((b for b in ("flash3", "flash2") if b in available_backends()), "sdpa")
    log.info("attention backend for %s/%s, head %d: %s", device_type, dtype, head_dim, name)
    return check_backend(name)


@torch.compiler.assume_constant_result  # under torch.compile: called while tracing, a constant in the graph
def _backend_name(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    return _backend_for(device_type, dtype, head_dim)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_len: int | None = None, backend: str | None = None
) -> torch.Tensor:
    """Scaled dot-product attention over (B, L, N, d) tensors, returns (B, Lq, N, d); keys at positions >=
    ``key_len`` are padding."""
    if key_len is not None and key_len < k.shape[1]:
        k, v = k[:, :key_len], v[:, :key_len]
    name = check_backend(backend) if backend else _backend_name(q.device.type, q.dtype, q.shape[-1])
    return BACKENDS[name](q, k, v)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of (B, Lq, H, d) queries over (B, Lk, H, d) keys: the output (B, Lq, H, d) and the log-sum-exp of
    the scaled scores, (B, Lq, H) in float32 (float64 for float64 inputs). PyTorch's kernels that return it."""
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # (B, H, L, d), as the kernels take them
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    elif q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    elif q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    else:
        out, lse = math_attention(q, k, v)
    return out.transpose(1, 2), lse[..., : q.shape[2]].transpose(1, 2).to(accumulation_dtype(q.dtype))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, L, d) attention and log-sum-exp in plain math (other devices): materialises the (Lq, Lk) scores."""
    acc = accumulation_dtype(q.dtype)
    scores = (q.to(acc) @ k.transpose(-1, -2).to(acc)) / math.sqrt(q.shape[-1])
    lse = scores.logsumexp(dim=-1)
    return (scores - lse[..., None]).exp().to(v.dtype) @ v, lse


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
