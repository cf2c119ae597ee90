"""Checkpoints named by a Hugging Face Hub repository id, and files named by an ``hf://`` address: fetched once with
huggingface_hub (its cache), then read locally."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def is_hub_id(path: str | os.PathLike) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub repository."""
    text = os.fspath(path)
    return not Path(text).expanduser().exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only")  # huggingface_hub's, as diffusers passes them


def local_checkpoint(path: str | os.PathLike, **hub: object) -> Path:
    """A local folder as is; a Hub repository id is fetched with huggingface_hub (or found in its cache); ``hub``:
    ``HUB_OPTIONS`` for the fetch (an error for a local folder, where they mean nothing)."""
    unknown = sorted(set(hub) - set(HUB_OPTIONS))
    if unknown:
        raise ValueError(f"unknown Hub options {unknown}; the options are {list(HUB_OPTIONS)}")
    hub = {k: v for k, v in hub.items() if v is not None}
    if not is_hub_id(path):
        if hub:
            raise ValueError(f"{path} is a local folder: {sorted(hub)} apply to a Hugging Face Hub repository id only")
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(os.fspath(path), **hub))


HF_PREFIX = "hf://"
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf", ".pth", ".pt", ".bin", ".ckpt")  # a file; any other name, a folder


def local_file(path: str | os.PathLike) -> Path:
    """A local path as is; ``hf://ORG/NAME[@REVISION]/PATH`` fetched from the Hub: a weights file (``WEIGHT_SUFFIXES``)
    with ``hf_hub_download``, any other PATH as a folder of the repository with ``snapshot_download`` (e.g. a
    per-expert LoRA folder such as ``Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1``)."""
    text = os.fspath(path)
    if not text.startswith(HF_PREFIX):
        return Path(text).expanduser()
    parts = text.removeprefix(HF_PREFIX).strip("/").split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{text}: an hf:// address is hf://ORG/NAME[@REVISION]/PATH in the repository")
    org, name, inner = parts
    name, _, revision = name.partition("@")
    repo, revision = f"{org}/{name}", revision or None
    from huggingface_hub import hf_hub_download, snapshot_download

    with fetching(text):
        if inner.lower().endswith(WEIGHT_SUFFIXES):
            return Path(hf_hub_download(repo, inner, revision=revision))
        return Path(snapshot_download(repo, revision=revision, allow_patterns=[f"{inner}/*"])) / inner


@contextmanager
def fetching(what: str) -> Iterator[None]:
    """huggingface_hub's errors inside (not found, offline, no access, a malformed name) as one line naming
    ``what``."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        yield
    except (OSError, ValueError, EntryNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{what}: cannot fetch it from the Hugging Face Hub ({type(e).__name__}: {first})") from None
