"""LoRAs on a pipeline's experts: which file goes on which expert, checked against the models before anything
changes, then applied through ``pipe.map_experts`` (so the memory policy moves the LoRA tensors with their expert).

A LoRA is a file, for every expert or for one (``expert="high"`` / ``"low"``), or a folder of per-expert files
(``high_noise_model.safetensors`` / ``low_noise_model.safetensors``, as Wan2.2-Lightning publishes them), each file
on its expert. Several can be loaded at once under their names, each with its strength.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from wanflow.checkpoints.lora import LoraError, LoraFile, check_fits, read_lora
from wanflow.configs import DENSE, EXPERTS
from wanflow.runtime.lora import apply_lora, baked_loras, loaded_loras, param_shapes, remove_lora, set_strength

LoraFiles = Mapping[str | None, LoraFile]  # what ``read_lora`` returns: {None: file} or {expert: file}


def check_strength(strength: object) -> float:
    """A LoRA strength: a finite number (negative and above 1 are allowed: users run 3.0 on Wan 2.1 LoRAs)."""
    try:
        value = float(strength)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"a LoRA strength must be a number, got {strength!r}") from None
    if not math.isfinite(value) or isinstance(strength, bool):
        raise ValueError(f"a LoRA strength must be a finite number, got {strength!r}")
    return value


def assign_experts(files: LoraFiles, expert: str | None, experts: Sequence[str], source: str) -> dict[str, LoraFile]:
    """Expert name -> LoRA file: one file on every expert (or on ``expert``), or a per-expert folder's files."""
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS} (or None for every expert), got {expert!r}")
    if expert is not None and expert not in experts:
        raise ValueError(
            f"{source}: this model has one expert ({DENSE}); a high- or low-noise LoRA needs an A14B model"
        )
    if None in files:
        return {name: files[None] for name in experts} if expert is None else {expert: files[None]}
    if DENSE in experts:
        raise ValueError(f"{source} holds a LoRA per expert (high/low noise), but this model has one expert")
    chosen = {name: f for name, f in files.items() if expert is None or name == expert}
    if not chosen:
        raise ValueError(f"{source} has no file for the {expert}-noise expert")
    return chosen  # type: ignore[return-value]


def check_on(models: Mapping[str, nn.Module], targets: Mapping[str, LoraFile]) -> None:
    """Every file against the parameter shapes of its expert (a ``LoraError`` naming the module that does not fit)."""
    for name, lora in targets.items():
        check_fits(lora, param_shapes(models[name]), len(models[name].blocks))


def read_for(path: str | os.PathLike, expert: str | None, experts: Sequence[str]) -> dict[str, LoraFile]:
    """Read a LoRA file or folder and assign it to experts (nothing checked against the weights yet)."""
    return assign_experts(read_lora(path), expert, experts, os.fspath(path))


def lora_name(path: str | os.PathLike, taken: Sequence[str]) -> str:
    """The file's (or folder's) name without suffix, made unique among ``taken``."""
    stem = Path(path).name.removesuffix(".safetensors") or "lora"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def load_lora(
    pipe,
    path: str | os.PathLike,
    strength: float = 1.0,
    expert: str | None = None,
    merge: bool = False,
    name: str | None = None,
    keep_originals: bool = True,
    targets: Mapping[str, LoraFile] | None = None,
) -> str:
    """Load a LoRA onto ``pipe``'s experts; returns its name. ``targets``: the files already read and assigned
    (``read_for``), e.g. checked before the pipeline was loaded."""
    strength = check_strength(strength)
    experts = pipe.experts
    targets = dict(targets) if targets is not None else read_for(path, expert, list(experts))
    name = name or lora_name(path, [a.name for m in experts.values() for a in loaded_loras(m)])
    check_on(experts, targets)
    if any(name in {a.name for a in loaded_loras(experts[e])} for e in targets):
        raise ValueError(f"a LoRA named {name!r} is already loaded; unload it first or pick another name")
    device = pipe.device

    def add(expert_name: str, model: nn.Module) -> nn.Module:
        if expert_name not in targets:
            return model
        return apply_lora(model, targets[expert_name], name, strength, merge, device, keep_originals)

    pipe.map_experts(add)
    return name


def unload_lora(pipe, name: str | None = None) -> None:
    """Take LoRA ``name`` (None: every LoRA) off ``pipe``'s experts; the weights come back bit for bit."""
    present = {a.name for m in pipe.experts.values() for a in loaded_loras(m)}
    if name is not None and name not in present:
        raise ValueError(f"no LoRA named {name!r} is loaded; loaded: {sorted(present)}")
    names = present if name is None else {name}

    def remove(_: str, model: nn.Module) -> nn.Module:
        for applied in loaded_loras(model):
            if applied.name in names:
                remove_lora(model, applied.name)
        return model

    pipe.map_experts(remove)


def set_lora_strength(pipe, name: str, strength: float, expert: str | None = None) -> None:
    """A new strength for LoRA ``name`` on every expert that has it (or on ``expert``), without reloading it: in place,
    so the memory policy's copies stay the ones it holds."""
    strength = check_strength(strength)
    holders = [m for e, m in pipe.experts.items() if expert in (None, e) and name in {a.name for a in loaded_loras(m)}]
    if not holders:
        raise ValueError(f"no LoRA named {name!r} is loaded{'' if expert is None else f' on the {expert} expert'}")
    for model in holders:
        set_strength(model, name, strength)


def describe_loaded(experts: Mapping[str, nn.Module]) -> list[dict[str, object]]:
    """The loaded LoRAs as records: name, strength per expert, merged or not (for the output file's metadata), then
    the ones baked into the weights for good (diffusers' fuse-then-unload), marked ``"baked": True``."""
    records: dict[tuple[str, bool], dict[str, object]] = {}
    for expert, model in experts.items():
        for applied in loaded_loras(model):
            new = {"name": applied.name, "strength": {}, "merged": applied.merged}
            records.setdefault((applied.name, False), new)["strength"][expert] = applied.strength  # type: ignore[index]
    for expert, model in experts.items():
        for name, strength in baked_loras(model).items():
            new = {"name": name, "strength": {}, "merged": True, "baked": True}
            records.setdefault((name, True), new)["strength"][expert] = strength  # type: ignore[index]
    return list(records.values())


def lora_metadata(experts: Mapping[str, nn.Module]) -> dict[str, str]:
    """``{"loras": json}`` when LoRAs are loaded, else nothing (the metadata of a plain run is unchanged)."""
    records = describe_loaded(experts)
    return {"loras": json.dumps(records, separators=(",", ":"))} if records else {}


__all__ = [
    "LoraError",
    "assign_experts",
    "check_strength",
    "describe_loaded",
    "load_lora",
    "lora_metadata",
    "read_for",
    "set_lora_strength",
    "unload_lora",
]
