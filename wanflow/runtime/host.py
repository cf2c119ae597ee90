"""Host memory for weights that wait off the device: what moves with a module, and page-locking it."""

from __future__ import annotations

import torch
from torch import nn

HOST = torch.device("cpu")


def module_tensors(module: nn.Module, recurse: bool = True) -> list[torch.Tensor]:
    """What moves with a module: its parameters and its buffers (an unmerged LoRA keeps its factors as buffers)."""
    return [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]


def pin(module: nn.Module) -> None:
    """Page-lock host parameters and buffers so host->device copies can run asynchronously (with CUDA only)."""
    if not torch.cuda.is_available():
        return
    for t in module_tensors(module):
        if t.device.type == "cpu" and not t.is_pinned():
            t.data = t.data.pin_memory()
