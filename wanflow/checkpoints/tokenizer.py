"""The umT5 tokenizer: from a folder, or from a Hugging Face repo id (downloaded once, then read from the cache)."""

from __future__ import annotations

import os
from pathlib import Path

from wanflow.checkpoints.hub import is_hub_id
from wanflow.checkpoints.io import CheckpointError


def tokenizer_folder(tokenizer: str | os.PathLike) -> Path:
    """The folder of a tokenizer given as a folder or a Hub repo id."""
    folder = _hub_tokenizer(str(tokenizer)) if is_hub_id(tokenizer) else Path(tokenizer)
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder not found: {folder}")
    return folder


def load_tokenizer(tokenizer: str | os.PathLike):
    """The tokenizer in a folder, or of a Hugging Face repo id (downloaded once, then read from the cache)."""
    from transformers import AutoTokenizer

    tokenizer = tokenizer_folder(tokenizer)
    try:
        return AutoTokenizer.from_pretrained(tokenizer)
    except Exception as e:  # transformers raises OSError/ValueError/... for broken folders
        raise CheckpointError(f"cannot load the tokenizer in {tokenizer}: {e}") from None


def _hub_tokenizer(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # offline and not cached, or no such repo
        raise CheckpointError(f"cannot get the tokenizer {repo} (offline? pass --tokenizer FOLDER): {e}") from None
