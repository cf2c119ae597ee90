"""``wanflow convert``: rewrite a checkpoint folder from one layout into the other, tensor for tensor.

Works on state dicts only (no model is built), so dtypes and values are preserved exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from wanflow.checkpoints.convert_files import files_to_official
from wanflow.checkpoints.io import CheckpointError, read_folder, read_weights, write_folder
from wanflow.checkpoints.layouts import (
    DEFAULTS_FILE,
    DIFFUSERS_EXPERTS,
    OFFICIAL_EXPERTS,
    OFFICIAL_T5,
    OFFICIAL_TOKENIZER,
    OFFICIAL_VAES,
    Layout,
    detect_layout,
)
from wanflow.checkpoints.load import dit_config, read_json
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, dit_config_to_diffusers, strip_prefixes
from wanflow.checkpoints.maps.t5 import (
    T5_KEYMAP,
    drop_tied,
    t5_config_from_hf,
    t5_config_from_state_dict,
    t5_config_to_hf,
)
from wanflow.checkpoints.maps.vae import (
    vae_config_from_diffusers,
    vae_config_from_state_dict,
    vae_config_to_diffusers,
    vae_keymap,
)
from wanflow.configs import DENSE, HIGH
from wanflow.sampling.diffusers_schedulers import reference_config
from wanflow.tasks import Task, task_for_model

SHARD_BYTES = 10 * 1024**3  # diffusers' default shard size


def convert_checkpoint(
    src: str | os.PathLike | Layout,
    dst: str | os.PathLike,
    to: str | None = None,
    max_shard_bytes: int = SHARD_BYTES,
    dtype: torch.dtype = torch.bfloat16,
) -> Layout:
    """Convert ``src`` into ``dst`` in the other layout (or ``to`` = "official" | "diffusers"); returns dst's layout.
    Single files (``kind == "files"``) are dequantised to ``dtype`` on the way."""
    layout = src if isinstance(src, Layout) else detect_layout(src)
    if layout.kind == "files":
        return _convert_files(layout, Path(dst), to or "official", max_shard_bytes, dtype)
    to = to or ("diffusers" if layout.kind == "official" else "official")
    if to not in ("official", "diffusers"):
        raise ValueError(f"unknown target layout {to!r}; choose 'official' or 'diffusers'")
    if to == layout.kind:
        raise ValueError(f"{src} is already in the {to} layout")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"output folder {dst} is not empty; choose a new folder")
    dst.mkdir(parents=True, exist_ok=True)
    (_to_diffusers if to == "diffusers" else _to_official)(layout, dst, max_shard_bytes)
    if (layout.root / DEFAULTS_FILE).is_file():  # the sampling defaults the weights were trained with (built-ins)
        shutil.copyfile(layout.root / DEFAULTS_FILE, dst / DEFAULTS_FILE)
    return detect_layout(dst)


def _convert_files(layout: Layout, dst: Path, to: str, shard: int, dtype: torch.dtype) -> Layout:
    """Single files -> the official layout (dequantised), then the diffusers one if asked."""
    if to not in ("official", "diffusers"):
        raise ValueError(f"unknown target layout {to!r}; choose 'official' or 'diffusers'")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"output folder {dst} is not empty; choose a new folder")
    if to == "official":
        files_to_official(layout, dst, dtype, shard)
        return detect_layout(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent if dst.parent.exists() else None) as tmp:
        files_to_official(layout, Path(tmp) / "official", dtype, shard)
        return convert_checkpoint(Path(tmp) / "official", dst, "diffusers", shard)


def _to_diffusers(layout: Layout, dst: Path, shard: int) -> None:
    model_type = "t2v"
    for name, folder in layout.experts.items():
        cfg = dit_config(folder, "official")
        model_type = cfg.model_type
        out = dst / DIFFUSERS_EXPERTS[HIGH if name == DENSE else name]
        write_folder(DIT_KEYMAP.forward(strip_prefixes(read_folder(folder))), out, max_shard_bytes=shard)
        write_json(out / "config.json", dit_config_to_diffusers(cfg))
    if layout.vae is not None:
        state = read_weights(layout.vae)
        cfg = vae_config_from_state_dict(state)
        write_folder(vae_keymap(cfg).forward(state), dst / "vae", max_shard_bytes=shard)
        write_json(dst / "vae" / "config.json", vae_config_to_diffusers(cfg))
    if layout.text_encoder is not None:
        state = read_weights(layout.text_encoder)
        cfg = t5_config_from_state_dict(state)
        write_folder(T5_KEYMAP.forward(state), dst / "text_encoder", stem="model", max_shard_bytes=shard)
        t5_config_to_hf(cfg).save_pretrained(dst / "text_encoder")
    if layout.tokenizer is not None:
        shutil.copytree(layout.tokenizer, dst / "tokenizer")
    task = task_for_model(model_type)
    _, overrides = layout.task_defaults()  # the checkpoint's own defaults (wanflow.json): its shift and boundary
    task = task.with_overrides({k: v for k, v in overrides.items() if k in ("shift", "boundary")})
    write_json(dst / "scheduler" / "scheduler_config.json", reference_config(task.shift))
    write_json(dst / "model_index.json", _model_index(layout, task))


def _model_index(layout: Layout, task: Task) -> dict:
    index = {
        "_class_name": task.diffusers_pipeline,
        "_diffusers_version": "0.35.0",
        "boundary_ratio": task.boundary if layout.is_moe else None,
        "expand_timesteps": task.expand_timesteps,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"] if layout.is_moe else [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if task.diffusers_pipeline == "WanImageToVideoPipeline":  # its Wan 2.1 CLIP image encoder: unused by Wan 2.2
        index.update(image_encoder=[None, None], image_processor=[None, None])
    return index


def _to_official(layout: Layout, dst: Path, shard: int) -> None:
    from transformers import UMT5Config

    for name, folder in layout.experts.items():
        cfg = dit_config(folder, "diffusers")
        out = dst if name == DENSE else dst / OFFICIAL_EXPERTS[name]
        write_folder(DIT_KEYMAP.reverse(read_folder(folder)), out, max_shard_bytes=shard)
        write_json(out / "config.json", cfg.to_json())
    if layout.vae is not None:
        cfg = vae_config_from_diffusers(read_json(layout.vae / "config.json"))
        save_pth(vae_keymap(cfg).reverse(read_folder(layout.vae)), dst / OFFICIAL_VAES[cfg.version])
    if layout.text_encoder is not None:
        t5_config_from_hf(UMT5Config.from_pretrained(layout.text_encoder))  # validates the architecture
        state = read_folder(layout.text_encoder, stem="model")
        save_pth(T5_KEYMAP.reverse(drop_tied(state)), dst / OFFICIAL_T5)
    if layout.tokenizer is not None:
        shutil.copytree(layout.tokenizer, dst / OFFICIAL_TOKENIZER)


def save_pth(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, path)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


__all__ = ["CheckpointError", "convert_checkpoint"]
