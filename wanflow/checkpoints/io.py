"""Reading and writing state dicts: safetensors (memory-mapped, single or sharded) and ``.pth`` (never unpickled)."""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, wrong keys or shapes, unknown layout."""


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One safetensors file, memory-mapped on CPU."""
    path = Path(path)
    _require(path, "safetensors file")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or not a safetensors file): {e}") from None


def read_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict; a ``.safetensors`` file with the same stem beside it is preferred."""
    path = Path(path)
    twin = path.with_suffix(".safetensors")
    if twin.exists():
        return read_safetensors(twin)
    _require(path, "checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise CheckpointError(_unsafe_pickle(path, e)) from None
        raise CheckpointError(f"cannot read {path} (truncated, corrupt, or not a plain state dict): {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


def _unsafe_pickle(path: Path, error: pickle.UnpicklingError) -> str:
    """What to say about a ``.pth`` that the weights-only unpickler refused: it holds Python objects besides tensors,
    that is code that unpickling would run. Not torch's own advice (to load it with ``weights_only=False``)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
    what = f" such as {found.group(1)}" if found else ""
    return (
        f"cannot read {path}: besides tensors it holds pickled Python objects{what}, that is code which loading "
        "would run, so wanflow will not load it; use weights saved as safetensors or as a plain state dict of tensors"
    )


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file by suffix: ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (read with weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_pth(path)


def read_folder(folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> dict[str, torch.Tensor]:
    """A diffusers-style folder: ``{stem}.safetensors``, or the shards listed in ``{stem}.safetensors.index.json``."""
    folder = Path(folder)
    _require(folder, "model folder")
    index = folder / f"{stem}.safetensors.index.json"
    single = folder / f"{stem}.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid shard index: {e}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            part = read_safetensors(folder / shard)
            state.update(part)
        listed = set(weight_map)
        if listed != set(state):
            missing = sorted(listed - set(state))[:5]
            raise CheckpointError(f"{index} lists tensors that its shards do not hold: {missing}")
        return state
    if single.exists():
        return read_safetensors(single)
    for alt in (folder / f"{stem}.bin", folder / f"{stem}.pth"):
        if alt.exists():
            return read_pth(alt)
    raise CheckpointError(f"no weights in {folder}: expected {single.name} or {index.name}")


def write_folder(
    state: Mapping[str, torch.Tensor],
    folder: str | os.PathLike,
    stem: str = "diffusion_pytorch_model",
    max_shard_bytes: int | None = None,
) -> None:
    """Write ``state`` as safetensors in ``folder``, sharded with an index when it exceeds ``max_shard_bytes``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    total = sum(v.numel() * v.element_size() for v in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(state, folder / f"{stem}.safetensors")
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` (built on the meta device) with every key and shape checked first."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        if extra:
            parts.append(f"unexpected keys {extra[:8]}" + (f" (+{len(extra) - 8} more)" if len(extra) > 8 else ""))
        raise CheckpointError(f"{what}: " + "; ".join(parts))
    bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"{what}: shape mismatch for " + "; ".join(bad[:5]))
    # A float parameter must get float values (an int32 tensor is a broken file); a layer stored quantised
    # (runtime.quantized: GGML blocks) expects its integer blocks.
    stored = next(
        ((k, v.dtype) for k, v in state.items() if expected[k].is_floating_point() and not v.is_floating_point()), None
    )
    if stored is not None:
        key, dtype = stored
        raise CheckpointError(f"{what}: {key} is stored as {dtype}; only floating-point weights can be loaded")
    module.load_state_dict(dict(state), strict=True, assign=True)


def load_umt5_strict(model: torch.nn.Module, state: dict, what: str) -> None:
    """transformers ties the token embedding under two names; files hold it once (or, from some tools, twice)."""
    from wanflow.checkpoints.maps.t5 import TIED_EMBEDDING, add_tied, drop_tied  # (maps import no loading code)

    if TIED_EMBEDDING[1] in state:
        state = add_tied(drop_tied(state))
    load_strict(model, state, what)
    model.tie_weights()
