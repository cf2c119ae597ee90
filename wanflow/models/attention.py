"""One attention entry point for the whole package; the backend is chosen once and logged.

Layout everywhere: (B, L, heads, head_dim). Softmax scale 1/sqrt(head_dim), no mask, non-causal (the Wan DiT
attends over all tokens of a sample and over all 512 zero-padded text positions).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def available_backends() -> list[str]:
    """Backends importable here (flash kernels also need a CUDA device at call time)."""
    return ["sdpa"] + [name for name, mod in _MODULES.items() if importlib.util.find_spec(mod) is not None]


@functools.cache
def _backend_for(device_type: str, dtype: torch.dtype) -> str:
    name = "sdpa"
    if device_type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        name = next((b for b in ("flash3", "flash2") if b in available_backends()), "sdpa")
    log.info("attention backend for %s/%s: %s", device_type, dtype, name)
    return name


_forced: str | None = None


def set_backend(name: str | None) -> None:
    """Force a backend (``None`` returns to automatic choice)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    _forced = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over (B, L, N, d) tensors, returns (B, Lq, N, d)."""
    return BACKENDS[_backend_name(q.device.type, q.dtype)](q, k, v)


@torch.compiler.assume_constant_result  # under torch.compile: called while tracing, a constant in the graph
def _backend_name(device_type: str, dtype: torch.dtype) -> str:
    return _forced or _backend_for(device_type, dtype)
