"""Detecting host-device synchronisation in CPU tests, with models and inputs on the meta device.

On the meta device an op whose output shape depends on data (``unique``, ``nonzero``, ``item``: each a host sync on
CUDA) fails, and ``HostTransfers`` records every op that reads a host tensor into a device tensor (a blocking copy on
CUDA). A step that runs on meta with nothing recorded queues its work without waiting for the device.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostTransfers(TorchDispatchMode):
    """Records every op that reads a host tensor (other than a 0-dim scalar) into a tensor on another device."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(a, torch.Tensor)]
        if any(t.device.type != "cpu" for t in tensors) and any(t.device.type == "cpu" and t.ndim for t in tensors):
            self.seen.append(func.__name__)
        return out
