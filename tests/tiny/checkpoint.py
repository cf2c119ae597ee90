"""Complete tiny checkpoints written in the OFFICIAL layout, one per task, read back by wanflow's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny.dit import TINY_I2V, TINY_T2V, TINY_TI2V, random_dit_state
from tests.tiny.t5 import TINY_T5, random_official_state
from tests.tiny.tokenizer import build_tiny_tokenizer
from tests.tiny.vae import TINY_VAE21, TINY_VAE22, random_vae_state
from wanflow.checkpoints.io import write_folder
from wanflow.checkpoints.layouts import OFFICIAL_T5, OFFICIAL_TOKENIZER, OFFICIAL_VAES

TINY_DITS = {"t2v-A14B": TINY_T2V, "i2v-A14B": TINY_I2V, "ti2v-5B": TINY_TI2V}
TINY_VAES = {"t2v-A14B": TINY_VAE21, "i2v-A14B": TINY_VAE21, "ti2v-5B": TINY_VAE22}


def write_dit(cfg, state, folder: Path, max_shard_bytes: int | None = None) -> None:
    write_folder(state, folder, max_shard_bytes=max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))


def write_official_checkpoint(root: str | Path, task: str, seed: int = 0) -> Path:
    """A tiny random checkpoint for ``task`` in the official layout (sharded experts, .pth VAE and T5)."""
    root = Path(root)
    cfg = TINY_DITS[task]
    if task == "ti2v-5B":
        write_dit(cfg, random_dit_state(cfg, seed), root)
    else:
        write_dit(cfg, random_dit_state(cfg, seed + 1), root / "high_noise_model", max_shard_bytes=40_000)
        write_dit(cfg, random_dit_state(cfg, seed + 2), root / "low_noise_model", max_shard_bytes=40_000)
    vae = TINY_VAES[task]
    torch.save(random_vae_state(vae, seed + 3), root / OFFICIAL_VAES[vae.version])
    torch.save(random_official_state(TINY_T5, seed + 4), root / OFFICIAL_T5)
    build_tiny_tokenizer(root / OFFICIAL_TOKENIZER)
    return root


def write_both_layouts(root: str | Path, task: str, seed: int = 0) -> Path:
    """``write_official_checkpoint`` in ``root / "official"`` and its conversion in ``root / "diffusers"``."""
    from wanflow.checkpoints.convert import convert_checkpoint

    root = Path(root)
    write_official_checkpoint(root / "official", task, seed=seed)
    convert_checkpoint(root / "official", root / "diffusers")
    return root
