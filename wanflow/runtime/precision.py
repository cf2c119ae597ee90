"""Casting a model to a compute dtype while its precision islands stay float32."""

from __future__ import annotations

import torch
from torch import nn


def cast_model(model: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Cast floating parameters to ``dtype`` in place, except those under a module named in ``keep_fp32``."""
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue
        target = torch.float32 if keep_fp32 and set(name.split(".")) & set(keep_fp32) else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    return model
