"""LoRAs merged into a checkpoint folder for good (``wanflow convert ... --lora_high F --lora_low F``): each expert is
loaded alone in its stored dtype, its LoRAs merged (float32 sums, one rounding, as ``load_lora(merge=True)``), and
its weight files rewritten; the other components are not touched. Peak memory is one expert, not the pipeline.
What was merged is recorded in the folder's ``wanflow.json`` (``merged_loras``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from wanflow.checkpoints.io import write_folder
from wanflow.checkpoints.layouts import DEFAULTS_FILE, Layout
from wanflow.checkpoints.load import load_dit, read_json
from wanflow.checkpoints.lora import LoraFile
from wanflow.checkpoints.maps.dit import DIT_KEYMAP
from wanflow.runtime.lora import apply_lora
from wanflow.runtime.quantized import float_state_dict

STEM = "diffusion_pytorch_model"  # the weight files' stem in both layouts
Merge = tuple[str, float, Mapping[str, LoraFile]]  # (source, strength, {expert: file}): ``cli.lora.cli_loras``


def merge_loras(layout: Layout, loras: Sequence[Merge], max_shard_bytes: int) -> dict[str, list[str]]:
    """Merge ``loras`` into the experts of the checkpoint folder ``layout`` (official or diffusers), in place;
    returns the sources merged into each expert."""
    if layout.kind not in ("official", "diffusers"):
        raise ValueError("LoRAs merge into a checkpoint folder (official or diffusers layout)")
    merged: dict[str, list[str]] = {}
    for expert, folder in layout.experts.items():
        mine = [(source, strength, files[expert]) for source, strength, files in loras if expert in files]
        if not mine:
            continue
        model = load_dit(folder, layout.kind, dtype=None)  # (its stored dtype)
        for i, (_, strength, lora) in enumerate(mine):
            apply_lora(model, lora, f"lora{i}", strength, merge=True, keep_originals=False)
        state = float_state_dict(model)
        _rewrite(folder, state if layout.kind == "official" else DIT_KEYMAP.forward(state), max_shard_bytes)
        merged[expert] = [f"{source}:{strength:g}" for source, strength, _ in mine]
        del model, state
    record_merged(layout.root, merged)
    return merged


def _rewrite(folder: Path, state: Mapping, max_shard_bytes: int) -> None:
    """The weight files of ``folder`` replaced by ``state``'s (written beside them first, then moved in)."""
    staging = folder / ".merging"
    write_folder(state, staging, stem=STEM, max_shard_bytes=max_shard_bytes)
    for old in folder.glob(f"{STEM}*.safetensors*"):
        old.unlink()
    for new in staging.iterdir():
        new.rename(folder / new.name)
    shutil.rmtree(staging)


def merged_record(root: Path) -> dict[str, list[str]]:
    """The LoRAs a checkpoint folder records as merged into its experts (``wanflow.json``'s ``merged_loras``)."""
    path = root / DEFAULTS_FILE
    return dict(read_json(path).get("merged_loras", {})) if path.is_file() else {}


def record_merged(root: Path, merged: Mapping[str, Sequence[str]]) -> None:
    """Add ``merged`` (expert -> "source:strength" of each LoRA now in its weights) to the folder's record."""
    if not any(merged.values()):
        return
    path = root / DEFAULTS_FILE
    data = read_json(path) if path.is_file() else {}
    for expert, sources in merged.items():
        if sources:
            data.setdefault("merged_loras", {}).setdefault(expert, []).extend(sources)
    path.write_text(json.dumps(data, indent=2) + "\n")
