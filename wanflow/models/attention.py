"""The one attention entry point of the package: the DiT, Ulysses, ring attention and the VAE all call it.

Layout everywhere: (B, L, heads, head_dim). Softmax scale 1/sqrt(head_dim), non-causal (the Wan DiT attends over all
tokens of a sample and over all 512 zero-padded text positions). ``key_len`` marks the keys past it as padding (the
sequence-parallel shards pad the sequence to a multiple of the ranks): they are cut off, not masked, so every backend
takes them. ``attention_lse`` also returns the log-sum-exp of the scores, which ring attention merges blocks with.

The backend follows from the device, the dtype and the head size, with what is installed read once, at import:
FlashAttention 3 or 2 on a GPU in half precision when installed and the head fits their kernels, PyTorch SDPA
otherwise; ``WANFLOW_ATTENTION=name`` in the environment forces one for the whole process. Pass ``backend=`` to
choose it for one call. The choice is plain constant logic, so under ``torch.compile`` it folds into the graph.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

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


_FLASH = next((name for name in ("flash3", "flash2") if name in available_backends()), None)  # read once
_FORCED = check_backend(os.environ[ENV]) if os.environ.get(ENV) else None


def default_backend(device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The backend ``attention`` uses for these inputs when none is named."""
    if _FORCED is not None:
        return _FORCED
    if _FLASH and device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim <= FLASH_MAX_HEAD_DIM:
        return _FLASH
    return "sdpa"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_len: int | None = None, backend: str | None = None
) -> torch.Tensor:
    """Scaled dot-product attention over (B, L, N, d) tensors, returns (B, Lq, N, d); keys at positions >=
    ``key_len`` are padding."""
    if key_len is not None and key_len < k.shape[1]:
        k, v = k[:, :key_len], v[:, :key_len]
    name = check_backend(backend) if backend else default_backend(q.device.type, q.dtype, q.shape[-1])
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
