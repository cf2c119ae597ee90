"""Weights that stay quantised in memory and on the device, dequantised per layer at compute time.

A single file may store a layer's weight as GGML blocks (GGUF: Q8_0 ... Q2_K, F16, BF16) or as float8 values with a
scale (ComfyUI's FP8 files). ``QuantTensor`` holds such a weight as the file stores it. ``quantize_linear`` gives an
``nn.Linear`` that weight through a parametrization, as ``runtime.fp8`` does for wanflow's own FP8: the stored tensors
are the layer's parameters (so the offload policies move and pin them like any other weight), and ``.weight`` is
rebuilt in the compute dtype at each access and freed after the matmul. The compute dtype is set by
``runtime.precision.cast_model`` (``compute_dtype``); the stored values are never cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from wanflow.runtime import ggml
from wanflow.runtime.fp8 import FP8Weight

FP8_TYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass
class QuantTensor:
    """A weight as a file stores it: GGML blocks of ``qtype`` in ``data`` (uint8, rows of blocks), or float8 values
    in ``data`` with their ``scale`` (a scalar, or one per output row; None for an unscaled file)."""

    shape: tuple[int, ...]
    qtype: str  # a key of ggml.FORMATS, or of FP8_TYPES
    data: torch.Tensor
    scale: torch.Tensor | None = None

    @property
    def is_fp8(self) -> bool:
        return self.qtype in FP8_TYPES

    @property
    def nbytes(self) -> int:
        scale = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.data.numel() * self.data.element_size() + scale

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.is_fp8:
            values = self.data.float()
            return (values if self.scale is None else values * self.scale.float().reshape(-1, 1)).to(dtype)
        return ggml.dequantize(self.data, self.qtype, self.shape, dtype)

    def row_scale(self) -> torch.Tensor:
        """FP8: the scale as one float32 value per output row (the layout of ``runtime.fp8``)."""
        scale = torch.ones(1) if self.scale is None else self.scale.float().reshape(-1)
        return scale.expand(self.shape[0]).reshape(-1, 1).clone()


class GGMLWeight(nn.Module):
    """The parametrization ``weight = dequantize(blocks)`` of a GGUF-stored layer, in ``compute_dtype``."""

    def __init__(self, qtype: str, shape: tuple[int, ...], compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.qtype, self.shape, self.compute_dtype = qtype, tuple(shape), compute_dtype

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return ggml.dequantize(blocks, self.qtype, self.shape, self.compute_dtype)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor]:
        """Only the placeholder of a layer being built on the meta device: the blocks come from the file. (A tuple:
        torch lets a parametrization change the dtype of what it stores only when it stores a sequence.)"""
        if weight.device.type != "meta":
            raise ValueError(f"a {self.qtype} layer cannot take new float weights; reload the file")
        rows = ggml.stored_bytes(self.qtype, self.shape) // self.shape[0]
        return (torch.empty(self.shape[0], rows, dtype=torch.uint8, device="meta"),)


def quantize_linear(linear: nn.Linear, weight: QuantTensor) -> dict[str, torch.Tensor]:
    """Give ``linear`` (on the meta device) the stored ``weight``; returns its new state-dict entries, relative to
    the layer (``parametrizations.weight.original...``), holding the stored tensors."""
    if tuple(linear.weight.shape) != weight.shape:
        raise ValueError(f"stored weight {weight.shape} does not fit the layer's {tuple(linear.weight.shape)}")
    linear.weight.requires_grad_(False)  # stored values take no gradient (and integer blocks cannot)
    if weight.is_fp8:  # wanflow's own FP8 layout: e4m3/e5m2 values and one scale per output row
        parametrize.register_parametrization(linear, "weight", FP8Weight(), unsafe=True)
        return {
            "parametrizations.weight.original0": weight.data,
            "parametrizations.weight.original1": weight.row_scale(),
        }
    parametrize.register_parametrization(linear, "weight", GGMLWeight(weight.qtype, weight.shape), unsafe=True)
    rows = weight.data.reshape(weight.shape[0], -1)
    return {"parametrizations.weight.original0": rows}


def stored_layers(model: nn.Module) -> dict[str, str]:
    """The layers of ``model`` that hold a stored (quantised) weight, by name, and their storage type."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            p = module.parametrizations.weight[0]
            out[name] = p.qtype if isinstance(p, GGMLWeight) else str(module.parametrizations.weight.original0.dtype)
    return out


def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with each stored (quantised) weight replaced by the float weight its layer computes
    with, under the layer's plain ``weight`` key: what a float checkpoint of the model holds."""
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations.weight." not in k}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight"] = module.weight.detach()
    return state
