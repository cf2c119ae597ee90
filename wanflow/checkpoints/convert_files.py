"""``wanflow convert`` of single files (``layouts.files_layout``): each component dequantised to one dtype and
written in the official layout (the diffusers layout is then one more conversion of that)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from wanflow.checkpoints.io import CheckpointError, write_folder
from wanflow.checkpoints.layouts import DEFAULTS_FILE, OFFICIAL_EXPERTS, OFFICIAL_T5, OFFICIAL_TOKENIZER, OFFICIAL_VAES
from wanflow.checkpoints.load_file import read_component
from wanflow.checkpoints.maps.t5 import T5_KEYMAP, TIED_EMBEDDING, drop_tied
from wanflow.checkpoints.maps.vae import vae_config_from_state_dict
from wanflow.checkpoints.single_file import SingleFile, dit_config_from_file
from wanflow.checkpoints.tokenizer import tokenizer_folder
from wanflow.configs import DENSE
from wanflow.runtime.quantized import QuantTensor


def dequantized(file: SingleFile, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of the file as ``dtype`` (float32 for the tensors a float32 layout keeps: none here)."""
    state = {}
    for key, value in file.state.items():
        tensor = value.dequantize(torch.float32) if isinstance(value, QuantTensor) else value
        state[key] = tensor.to(dtype).contiguous() if tensor.is_floating_point() else tensor
    return state


def files_to_official(layout, dst: Path, dtype: torch.dtype, shard: int) -> None:
    """Each expert, the VAE, the umT5 encoder and the tokenizer of a single-files layout into ``dst``."""
    for name, path in layout.experts.items():
        out = dst if name == DENSE else dst / OFFICIAL_EXPERTS[name]
        if path.is_dir():
            shutil.copytree(path, out, dirs_exist_ok=True)
            continue
        file = read_component(path, "dit", "--dit_low" if name == "low" else "--dit")
        write_folder(dequantized(file, dtype), out, max_shard_bytes=shard)
        (out / "config.json").write_text(json.dumps(dit_config_from_file(file).to_json(), indent=2) + "\n")
    _component(layout.require("vae"), "vae", dtype, dst)
    _component(layout.require("text_encoder"), "t5", dtype, dst)
    shutil.copytree(tokenizer_folder(layout.require("tokenizer")), dst / OFFICIAL_TOKENIZER)
    if (layout.root / DEFAULTS_FILE).is_file():
        shutil.copy(layout.root / DEFAULTS_FILE, dst / DEFAULTS_FILE)


def _component(path: Path, kind: str, dtype: torch.dtype, dst: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path} is a diffusers folder: convert single files alone (give --vae and --t5 too)")
    state = dequantized(read_component(path, kind, f"--{kind}"), dtype)
    if kind == "vae":  # the VAE stays float32, as the reference runs it
        state = {k: v.float() for k, v in state.items()}
        target = dst / OFFICIAL_VAES[vae_config_from_state_dict(state).version]
    else:
        state = T5_KEYMAP.reverse(drop_tied(state)) if TIED_EMBEDDING[1] in state else state
        target = dst / OFFICIAL_T5
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
