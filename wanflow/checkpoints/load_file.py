"""Loading each component from a single file (``single_file.read_single_file``): built on the meta device, the
quantised weights of its linear layers kept as stored (``runtime.quantized``), every other tensor dequantised once,
and every key and shape checked (``io.load_strict``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from wanflow.checkpoints.io import CheckpointError, load_strict, load_umt5_strict
from wanflow.checkpoints.single_file import (
    SingleFile,
    Tensor,
    dit_config_from_file,
    read_single_file,
    require_kind,
)
from wanflow.checkpoints.tokenizer import load_tokenizer
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.runtime.precision import cast_model
from wanflow.runtime.quantized import QuantTensor, quantize_linear

if TYPE_CHECKING:
    from wanflow.models.text_encoder import TextEncoder
    from wanflow.models.vae import WanVAE


def read_component(path: str | os.PathLike, kind: str, flag: str) -> SingleFile:
    """The file, checked to hold ``kind``; ``flag`` names where the user gave it (``--dit``)."""
    file = read_single_file(path)
    require_kind(file, kind, flag)
    return file


def stored_state(model: nn.Module, state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict to load into ``model`` (on the meta device): the quantised weight of a linear layer stays as
    stored (its layer is given a parametrization); any other quantised tensor is dequantised to ``dtype``."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, QuantTensor):
            out[key] = value
            continue
        owner = modules.get(key.removesuffix(".weight")) if key.endswith(".weight") else None
        if isinstance(owner, nn.Linear):
            prefix = key.removesuffix("weight")
            try:
                entries = quantize_linear(owner, value)
            except ValueError as e:
                raise CheckpointError(f"{key}: {e}") from None
            out.update({prefix + k: v for k, v in entries.items()})
        else:
            out[key] = value.dequantize(dtype)
    return out


def load_dit_file(path: str | os.PathLike, flag: str = "--dit", dtype: torch.dtype = torch.float32) -> WanDiT:
    """A DiT from one file; its quantised linears stay quantised (computed in the dtype ``cast_model`` sets)."""
    file = read_component(path, "dit", flag)
    cfg = dit_config_from_file(file)
    with torch.device("meta"):
        model = WanDiT(cfg)
    load_strict(model, stored_state(model, file.state, torch.float32), f"DiT in {file.path}")
    cast_model(model, dtype, keep_fp32=FP32_MODULES)
    return model.eval().requires_grad_(False)


def _float_state(file: SingleFile) -> dict[str, torch.Tensor]:
    return {k: v.dequantize(torch.float32) if isinstance(v, QuantTensor) else v for k, v in file.state.items()}


def load_vae_file(path: str | os.PathLike, flag: str = "--vae") -> WanVAE:
    """The VAE from one file (official names, any float or FP8 storage), in float32 as the reference."""
    from wanflow.checkpoints.maps.vae import vae_config_from_state_dict
    from wanflow.models.vae import WanVAE

    file = read_component(path, "vae", flag)
    state = {k: v.float() for k, v in _float_state(file).items()}
    try:
        cfg = vae_config_from_state_dict(state)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"cannot infer the VAE architecture of {file.path}: {e}") from None
    with torch.device("meta"):
        model = WanVAE(cfg)
    load_strict(model, state, f"VAE in {file.path}")
    return model.eval().requires_grad_(False)


def load_t5_file(
    path: str | os.PathLike,
    tokenizer,
    text_len: int | None = None,
    flag: str = "--t5",
    dtype: torch.dtype | None = None,
) -> TextEncoder:
    """umT5 from one file, under the official names (``.pth``) or transformers' (ComfyUI's files); its quantised
    linears stay quantised; ``dtype=None`` keeps the stored float dtype."""
    from wanflow.checkpoints.maps.t5 import T5_KEYMAP, TIED_EMBEDDING, drop_tied, t5_config_from_state_dict
    from wanflow.models.text_encoder import TextEncoder, build_umt5

    file = read_component(path, "t5", flag)
    state = file.state if TIED_EMBEDDING[1] in file.state else T5_KEYMAP.forward(file.state)
    state = drop_tied(state)
    try:
        cfg = t5_config_from_state_dict(state)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the umT5 architecture of {file.path}: {e}") from None
    with torch.device("meta"):
        model = build_umt5(cfg)
    load_umt5_strict(model, stored_state(model, state, torch.float32), f"text encoder in {file.path}")
    if dtype is not None:
        cast_model(model, dtype)
    return TextEncoder(load_tokenizer(tokenizer), model.eval().requires_grad_(False), text_len=text_len or cfg.text_len)
