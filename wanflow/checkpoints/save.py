"""Write loaded models back as a checkpoint folder (``WanPipeline.save_pretrained``): the experts as they are now
(LoRAs merged into them included, quantised layers as the float weights they compute with), the VAE, the text
encoder and its tokenizer, and the task's sampling defaults (``wanflow.json``), in the official layout or, through
``convert_checkpoint``, the diffusers one. Loading the folder gives the same models back (tested: the same frames)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wanflow.checkpoints.convert import SHARD_BYTES, convert_checkpoint, save_pth, write_json
from wanflow.checkpoints.io import write_folder
from wanflow.checkpoints.layouts import (
    DEFAULTS_FILE,
    OFFICIAL_EXPERTS,
    OFFICIAL_T5,
    OFFICIAL_TOKENIZER,
    OFFICIAL_VAES,
    Layout,
    detect_layout,
)
from wanflow.checkpoints.load import Components
from wanflow.checkpoints.maps.t5 import T5_KEYMAP, drop_tied
from wanflow.checkpoints.merge import record_merged
from wanflow.configs import DENSE
from wanflow.runtime.quantized import float_state_dict
from wanflow.sampling.diffusers_schedulers import FAMILIES
from wanflow.tasks import Task

LAYOUTS = ("diffusers", "official")


def save_checkpoint(
    components: Components,
    task: Task,
    dst: str | os.PathLike,
    layout: str = "diffusers",
    max_shard_bytes: int = SHARD_BYTES,
    merged: Mapping[str, Sequence[str]] | None = None,
) -> Layout:
    """``components`` and ``task``'s defaults into the new folder ``dst`` in ``layout``; returns its layout.
    ``merged``: the LoRAs in the experts' weights, by expert, to record (``merge.record_merged``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} is not an empty folder; choose a new one")
    if layout == "official":
        write_official(components, task, dst, max_shard_bytes, merged or {})
        return detect_layout(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        write_official(components, task, Path(tmp) / "official", max_shard_bytes, merged or {})
        return convert_checkpoint(Path(tmp) / "official", dst, "diffusers", max_shard_bytes)


def write_official(
    components: Components,
    task: Task,
    dst: Path,
    max_shard_bytes: int | None,
    merged: Mapping[str, Sequence[str]],
) -> None:
    """The official layout of ``components`` with ``task``'s defaults and the LoRAs ``merged`` into the experts."""
    write_models(components.experts, components.vae, components.text_encoder, dst, max_shard_bytes=max_shard_bytes)
    write_defaults(dst, task.name, task_defaults(task))
    record_merged(dst, merged)


def write_models(
    experts: Mapping[str, nn.Module],
    vae: nn.Module,
    text_encoder: nn.Module,
    dst: Path,
    max_shard_bytes: int | None = None,
    dtype: torch.dtype | None = None,
    t5_dtype: torch.dtype | None = None,
) -> None:
    """Models in the official layout: expert folders (or the dense model at the top), the VAE and umT5 ``.pth``
    files, the tokenizer folder; quantised layers as the float weights they compute with; ``dtype`` / ``t5_dtype``:
    what the DiTs and the VAE / the umT5 are stored in (default: as they are). The built-ins are written here too."""
    for name, model in experts.items():
        out = dst if name == DENSE else dst / OFFICIAL_EXPERTS[name]
        write_folder(_stored(float_state_dict(model), dtype), out, max_shard_bytes=max_shard_bytes)
        write_json(out / "config.json", model.cfg.to_json())
    save_pth(_stored(vae.state_dict(), dtype), dst / OFFICIAL_VAES[vae.cfg.version])
    t5_state = T5_KEYMAP.reverse(drop_tied(float_state_dict(text_encoder.model)))
    save_pth(_stored(t5_state, t5_dtype), dst / OFFICIAL_T5)
    text_encoder.tokenizer.save_pretrained(dst / OFFICIAL_TOKENIZER)


def write_defaults(dst: Path, task: str, defaults: Mapping[str, object]) -> None:
    """``wanflow.json``: the task a checkpoint is for and its sampling defaults (``Layout.task_defaults`` reads it)."""
    write_json(dst / DEFAULTS_FILE, {"task": task, "defaults": dict(defaults)})


def _stored(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: v.detach() if dtype is None else v.detach().to(dtype) for k, v in state.items()}


def task_defaults(task: Task) -> dict[str, object]:
    """The sampling defaults a checkpoint stores for ``task`` (``Task.OVERRIDABLE``), as JSON values."""
    return json.loads(json.dumps({key: getattr(task, key) for key in Task.OVERRIDABLE}))


def write_scheduler(folder: Path, scheduler: Any) -> bool:
    """A diffusers scheduler's config as the diffusers folder's ``scheduler/`` and its class in ``model_index.json``,
    so that diffusers loads the folder with it; only for a class diffusers has by that name (``FAMILIES``: a subclass
    of one, whose grid is its own code, is not written). Returns whether it was written."""
    name = type(scheduler).__name__
    if name not in FAMILIES:
        return False
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    write_json(folder / "scheduler" / "scheduler_config.json", {"_class_name": name, **config})
    index = json.loads((folder / "model_index.json").read_text())
    write_json(folder / "model_index.json", {**index, "scheduler": ["diffusers", name]})
    return True
