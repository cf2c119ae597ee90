"""FP8 weight storage: e4m3 values with one scale per output channel, dequantised to the compute dtype on the fly.

``quantize_fp8(model)`` is a transform applied after loading and after ``cast_model`` (a later cast would turn the
e4m3 values back into wide floats). Every ``nn.Linear`` inside the transformer blocks (q/k/v/o of both attentions
and the FFN: 98% of an A14B expert's parameters) then stores its weight as two tensors,

    values = round_e4m3(w / s)          (out, in) float8_e4m3fn, 1 byte per weight
    s      = max_j |w[i, j]| / 448      (out, 1)  in the compute dtype (448 is the largest e4m3 value)

and its ``weight`` becomes the parametrization ``values * s`` (``torch.nn.utils.parametrize``). The layer's forward,
and everything that reads ``.weight`` (the DiT reads its compute dtype there), remain the plain ``nn.Linear`` code:
the weight is rebuilt in the compute dtype at each access and freed after the matmul. Both stored tensors are
parameters, so the offload policies move and pin them like any other weight.

Error: e4m3 keeps 3 mantissa bits, so rounding moves a weight by at most 2^-4 of its value, or by 2^-10 s for the
subnormals (|w| < 2^-6 s). The scale per output row keeps a row of small weights from drowning in a row of large
ones. The embeddings, the float32 islands (``FP32_MODULES``) and the head keep their dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from wanflow.models.dit import FP32_MODULES

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
COMPUTE_DTYPES = (torch.float32, torch.bfloat16)  # float16 could not hold the scales of tiny rows


def quantize(weight: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) weight -> e4m3 values (out, in) and per-row scales (out, 1) in ``dtype`` (default the weight's); a
    float32 weight with a lower ``dtype`` is rounded once, to e4m3 (a LoRA merged into fp8 weights)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, 1.0).to(dtype or weight.dtype)  # an all-zero row gets scale 1
    values = (w / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)  # the clamp absorbs the rounding of s
    return values, scale


def dequantize(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 values times their row scales, in the scales' dtype (e4m3 -> bfloat16 / float32 is exact)."""
    return values.to(scale.dtype) * scale


class FP8Weight(nn.Module):
    """The parametrization ``weight = values * scale``; assigning a new weight quantizes it (``right_inverse``)."""

    def forward(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return dequantize(values, scale)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize(weight)


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The layers worth storing in fp8: every ``nn.Linear`` of ``model.blocks`` outside the float32 islands."""
    return [
        module
        for name, module in model.blocks.named_modules()
        if isinstance(module, nn.Linear) and not set(name.split(".")) & set(FP32_MODULES)
    ]


def quantize_fp8(model: nn.Module) -> nn.Module:
    """Store the block linears of a DiT as e4m3 values + per-output-channel scales, in place; returns ``model``.

    Layers quantized by an earlier call are left as they are. The compute dtype is the weights' dtype at this call.
    """
    for linear in block_linears(model):
        if parametrize.is_parametrized(linear, "weight"):
            continue
        if linear.weight.dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"fp8 weights compute in float32 or bfloat16, the model is in {linear.weight.dtype}; "
                "cast it first (runtime.precision.cast_model)"
            )
        linear.weight.requires_grad_(False)  # inference storage: the e4m3 values take no gradient
        parametrize.register_parametrization(linear, "weight", FP8Weight())
    return model


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``module`` (the e4m3 values count one byte each)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
