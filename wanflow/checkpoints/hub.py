"""Checkpoints named by a Hugging Face Hub repository id: fetched once with huggingface_hub, then read locally."""

from __future__ import annotations

import os
from pathlib import Path


def is_hub_id(path: str | os.PathLike) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub repository."""
    text = os.fspath(path)
    return not Path(text).expanduser().exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def local_checkpoint(path: str | os.PathLike) -> Path:
    """A local folder as is; a Hub repository id is fetched with huggingface_hub (or found in its cache)."""
    if not is_hub_id(path):
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(os.fspath(path)))
