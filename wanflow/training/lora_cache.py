"""Latents and text states computed once and stored beside the data, so that LoRA training holds only the DiT.

Each entry is a safetensors file under ``DATA_DIR/.wanflow-cache/``, named by a digest of everything it depends on:
the media file's bytes (SHA-256), the training size, frames and windows, and the encoder that made it (its files'
paths, sizes and modification times); a caption's states by its text and the text encoder. Change any of them and
the entry is simply not found; an unreadable entry is computed again. The VAE and the text encoder are loaded only
when an entry is missing, and freed once everything is cached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wanflow.checkpoints.layouts import Layout
from wanflow.io.video import from_uint8
from wanflow.training.flow import image_condition
from wanflow.training.lora_data import CACHE_DIR, ClipShape, Item, load_item

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time: a run asks twice)."""
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(path: Path | str | None) -> list[str]:
    """What identifies a model on disk without reading it: each file's path, size and modification time."""
    if path is None:
        return []
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files]


class Encoders:
    """The VAE and text encoder of a checkpoint, each loaded on first use, on ``device``."""

    def __init__(self, layout: Layout, device: torch.device, text_len: int):
        self.layout, self.device, self.text_len = layout, device, text_len
        self._vae = self._text = None

    def vae(self):
        if self._vae is None:
            from wanflow.checkpoints.load import load_vae

            self._vae = load_vae(self.layout.require("vae"), _kind(self.layout, "vae")).to(self.device)
        return self._vae

    def text(self):
        if self._text is None:
            from wanflow.checkpoints.load import load_text_encoder

            path, tokenizer = self.layout.require("text_encoder"), self.layout.require("tokenizer")
            kind = _kind(self.layout, "text_encoder")
            self._text = load_text_encoder(path, tokenizer, kind, text_len=self.text_len).to(self.device)
        return self._text

    def vae_identity(self) -> list[str]:
        return model_identity(self.layout.vae)

    def text_identity(self) -> list[str]:
        return [*model_identity(self.layout.text_encoder), *model_identity(self.layout.tokenizer), str(self.text_len)]

    def free(self) -> None:
        self._vae = self._text = None


def _kind(layout: Layout, component: str) -> str:
    if layout.kind != "files":
        return layout.kind
    return "diffusers" if getattr(layout, component).is_dir() else "official"


def entry_path(folder: Path, stem: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return folder / CACHE_DIR / f"{stem}.{digest}.safetensors"


def cached(folder: Path, stem: str, key: dict, compute: Callable[[], Tensors]) -> Tensors:
    """The entry of ``key`` under ``folder``'s cache, computed with ``compute`` and stored when missing."""
    path = entry_path(folder, stem, key)
    if path.is_file():
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            log.warning("cache entry %s is unreadable (%s); computing it again", path.name, e)
    tensors = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return tensors


def latent_key(item: Item, shape: ClipShape, encoders: Encoders, i2v: bool) -> dict:
    return {
        "kind": "latents",
        "file": file_digest(item.media),
        "shape": [shape.width, shape.height, 1 if item.is_image else shape.frames, shape.windows],
        "vae": encoders.vae_identity(),
        "i2v": i2v,
    }


def item_latents(folder: Path, item: Item, shape: ClipShape, encoders: Encoders, i2v: bool) -> Tensors:
    """``{"latents": (K, C, T, H, W)}`` of the item's windows, with ``"y"`` (K, 4 + C, T, H, W) for I2V."""

    @torch.no_grad()
    def encode() -> Tensors:
        video = from_uint8(load_item(item, shape)).to(encoders.device)  # (K, 3, F, H, W)
        vae = encoders.vae()
        out = {"latents": torch.cat([vae.encode(v[None]) for v in video])}
        if i2v:
            out["y"] = torch.cat([image_condition(vae, v[None]) for v in video])
        return out

    return cached(folder, item.media.stem, latent_key(item, shape, encoders, i2v), encode)


def text_states(folder: Path, text: str, encoders: Encoders) -> torch.Tensor:
    """(L, D) states of ``text`` (its tokens and EOS, unpadded)."""
    key = {"kind": "text", "text": text, "encoder": encoders.text_identity()}
    stem = "text-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return cached(folder, stem, key, lambda: {"context": encoders.text().encode([text])[0]})["context"]


def uncached(folder: Path, items: list[Item], shape: ClipShape, encoders: Encoders, i2v: bool) -> list[Item]:
    """The items whose latents are not cached yet (they must be read)."""
    return [i for i in items if not entry_path(folder, i.media.stem, latent_key(i, shape, encoders, i2v)).is_file()]
