"""Where the experts live during sampling: policies applied by the pipeline, never code inside the models.

- ``resident``: every expert on the device for the whole run (fastest; needs memory for all of them).
- ``model``: only the active expert on the device; the other waits in (pinned) host memory and is swapped in at
  the boundary. This is what the reference does on one GPU.
- ``block``: the expert stays in host memory and each transformer block is copied to the device just before it
  runs (forward hooks); only the small embeddings and head stay resident.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

POLICIES = ("resident", "model", "block")


def _pin(module: nn.Module) -> None:
    """Page-lock host parameters so host->device copies can run asynchronously."""
    if not torch.cuda.is_available():
        return
    for p in module.parameters():
        if p.device.type == "cpu" and not p.is_pinned():
            p.data = p.data.pin_memory()


def _to(module: nn.Module, device: torch.device) -> None:
    for p in module.parameters():
        if p.device != device:
            p.data = p.data.to(device, non_blocking=True)


def stream_blocks(model: nn.Module, device: torch.device) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep ``model.blocks`` in host memory and move each block to ``device`` only while it runs."""
    host = torch.device("cpu")
    for name, child in model.named_children():
        if name != "blocks":
            _to(child, device)
    for p in model.parameters(recurse=False):
        p.data = p.data.to(device)
    _pin(model.blocks)
    handles = []
    for block in model.blocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: _to(m, device)))
        handles.append(block.register_forward_hook(lambda m, args, out: _to(m, host)))
    return handles


class ExpertPlacement:
    """Callable ``placement(name) -> expert ready on the device`` implementing one of ``POLICIES``."""

    def __init__(self, experts: Mapping[str, nn.Module], device: torch.device | str, policy: str = "model"):
        if policy not in POLICIES:
            raise ValueError(f"unknown offload policy {policy!r}; choose one of {POLICIES}")
        self.experts, self.device, self.policy = dict(experts), torch.device(device), policy
        self.active: str | None = None
        if policy == "resident":
            for model in self.experts.values():
                _to(model, self.device)
        elif policy == "block":
            for model in self.experts.values():
                stream_blocks(model, self.device)
        else:
            for model in self.experts.values():
                _pin(model)

    def __call__(self, name: str) -> nn.Module:
        if self.policy == "model" and name != self.active:
            if self.active is not None:
                _to(self.experts[self.active], torch.device("cpu"))
                _pin(self.experts[self.active])
            _to(self.experts[name], self.device)
            log.debug("expert %s on %s", name, self.device)
            self.active = name
        return self.experts[name]

    def release(self) -> None:
        """After sampling: under ``model`` offload, put the active expert back in host memory."""
        if self.policy == "model" and self.active is not None:
            _to(self.experts[self.active], torch.device("cpu"))
            self.active = None
