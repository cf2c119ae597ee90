"""Casting a model to a compute dtype while its precision islands stay float32.

Weights stored quantised (``runtime.fp8``, ``runtime.quantized``) keep their stored values: the float8 values and
GGML blocks are never cast; their scales take the compute dtype, and a GGML layer's ``compute_dtype`` is set to it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

STORED_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)  # float, but stored values: never cast


def _target(name: str, dtype: torch.dtype, keep_fp32: tuple[str, ...]) -> torch.dtype:
    return torch.float32 if keep_fp32 and set(name.split(".")) & set(keep_fp32) else dtype


def cast_model(model: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Cast floating parameters to ``dtype`` in place, except those under a module named in ``keep_fp32``."""
    for name, param in model.named_parameters():
        if not param.is_floating_point() or param.dtype in STORED_DTYPES:
            continue
        target = _target(name, dtype, keep_fp32)
        if param.dtype != target:
            param.data = param.data.to(target)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if hasattr(p, "compute_dtype"):
                    p.compute_dtype = _target(name, dtype, keep_fp32)
    return model
