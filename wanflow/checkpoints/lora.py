"""LoRA files -> one canonical form: per official parameter name, the deltas a file adds to it.

Every key format in the wild (``checkpoints/maps/lora.py``) is read by this one engine: the dialect is detected from
the keys, each key is split into module and role, the module is renamed to its official name, and each module's
tensors become deltas:

- ``LowRank(down, up, scale)``: ``delta = scale * up @ down`` with ``scale = alpha / rank`` when the file has an
  ``alpha`` (kohya, musubi, Wan native, ComfyUI), or the ``lora_alpha`` / ``alpha_pattern`` / ``use_rslora`` of the
  PEFT config diffusers writes into the file's header, else 1 (diffusers / PEFT);
- ``Full(delta)``: a dense delta: LoHa ``(w1a @ w1b) * (w2a @ w2b) * alpha / rank``, LoKr ``kron(w1, w2) * scale``,
  and the full-weight deltas ``diff`` (weight), ``diff_b`` (bias) and ``diff_m`` (modulation) of the LightX2V files.

Keys of Wan 2.1's image branch are skipped and counted; any other key that matches nothing is an error naming it.
Files are read with safetensors, never unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wanflow.checkpoints.hub import local_file
from wanflow.checkpoints.io import CheckpointError
from wanflow.checkpoints.maps.dit import DIT_KEYMAP
from wanflow.checkpoints.maps.lora import (
    DELTA_PARAMS,
    DOTTED_PREFIXES,
    MODULE_SPELLINGS,
    ROLE_SUFFIXES,
    ROLES,
    SKIPPED_SPELLINGS,
    UNDERSCORE_PREFIXES,
)
from wanflow.configs import HIGH, LOW

log = logging.getLogger(__name__)

# A folder of per-expert files, as Wan2.2-Lightning publishes them.
EXPERT_FILES = {HIGH: "high_noise_model.safetensors", LOW: "low_noise_model.safetensors"}


class LoraError(CheckpointError):
    """A LoRA file that cannot be used: unreadable, unknown keys, factors that do not fit."""


@dataclass(frozen=True, eq=False)
class LowRank:
    """``scale * up @ down``: down (r, in, *kernel), up (out, r, *ones)."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        """The dense delta in float32 on ``device``, shaped like the parameter."""
        up, down = (t.to(device).flatten(1).float() for t in (self.up, self.down))
        return (up @ down).mul_(self.scale).reshape(shape)


@dataclass(frozen=True, eq=False)
class Full:
    """A dense delta of the parameter's shape."""

    tensor: torch.Tensor
    rank: int | None = None  # LoHa / LoKr: the factors' rank, for ``wanflow info``

    def delta(self, shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        return self.tensor.to(device).float().reshape(shape)


Delta = LowRank | Full


@dataclass
class LoraFile:
    """A LoRA in canonical form: official parameter name -> deltas, and what the file was."""

    deltas: dict[str, list[Delta]]
    format: str  # e.g. "kohya/musubi keys, official names: LoRA down/up + alpha"
    skipped: list[str] = field(default_factory=list)  # keys of modules Wan 2.2 does not have
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        return sorted({d.rank for ds in self.deltas.values() for d in ds if d.rank is not None})

    @property
    def modules(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[0] for name in self.deltas})


def read_lora(path: str | os.PathLike) -> dict[str | None, LoraFile]:
    """A LoRA file (``{None: file}``, for whichever expert the caller picks), or a folder of per-expert files
    ``high_noise_model.safetensors`` / ``low_noise_model.safetensors`` (``{"high": ..., "low": ...}``); either may be
    an ``hf://ORG/NAME/PATH`` address on the Hub (``checkpoints.hub.local_file``)."""
    path = local_file(path)
    if path.is_dir():
        files = {expert: path / name for expert, name in EXPERT_FILES.items() if (path / name).is_file()}
        if not files:
            raise LoraError(f"{path} is a folder without {' or '.join(EXPERT_FILES.values())}: not a LoRA")
        return {expert: read_lora_file(file) for expert, file in files.items()}
    return {None: read_lora_file(path)}


def read_lora_file(path: str | os.PathLike) -> LoraFile:
    """One ``.safetensors`` LoRA file in any dialect, in canonical form."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LoraError(f"cannot read LoRA {path}: not a safetensors file, or a truncated one ({e})") from None
    lora = parse_lora(state, str(path), metadata)
    lora.metadata = dict(metadata)
    return lora


Scale = Callable[[str, int], float]  # (official module, rank) -> the scale of a low-rank pair without an alpha key


def peft_scale(metadata: Mapping[str, str] | None, source: str = "LoRA") -> Scale:
    """The scale PEFT gives a module: ``lora_alpha`` (or its ``alpha_pattern`` entry) over the rank, or over its square
    root with ``use_rslora``, from the config diffusers saves in the header (``lora_adapter_metadata``); else 1."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return lambda module, rank: 1.0
    try:
        config = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()}
    except (json.JSONDecodeError, AttributeError) as e:
        raise LoraError(f"{source}: its lora_adapter_metadata is not a JSON object ({e})") from None
    alpha, patterns = config.get("lora_alpha"), config.get("alpha_pattern") or {}
    root = bool(config.get("use_rslora"))
    if alpha is None:
        return lambda module, rank: 1.0

    def scale(module: str, rank: int) -> float:
        names = (module, (DIT_KEYMAP.lookup(module + ".weight") or module).removesuffix(".weight"))
        hits = [v for k, v in patterns.items() if any(re.fullmatch(rf"(.*\.)?({k})", n) for n in names)]
        return float(hits[0] if hits else alpha) / (math.sqrt(rank) if root else rank)

    return scale


def parse_lora(
    state: Mapping[str, torch.Tensor], source: str = "LoRA", metadata: Mapping[str, str] | None = None
) -> LoraFile:
    """The canonical form of a LoRA state dict (``metadata``: its safetensors header, for PEFT's alpha); ``LoraError``
    naming the keys that match nothing."""
    if not state:
        raise LoraError(f"{source} holds no tensors")
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    skipped, unknown, namings, families = [], [], set(), set()
    for key, tensor in state.items():
        found = split_key(key)
        if found is None:
            unknown.append(key)
            continue
        module, role, naming = found
        if module is None:
            skipped.append(key)
            continue
        family, slot = ROLES[role]
        if slot in modules[module]:
            raise LoraError(f"{source}: module {module} has its {slot} tensor twice (key {key})")
        modules[module][slot] = tensor
        namings.add(naming)
        families.add(family)
    if unknown:
        raise LoraError(f"{source}: {len(unknown)} key(s) match no module of the Wan 2.2 DiT: {_listing(unknown)}")
    if not modules:
        raise LoraError(f"{source}: every key belongs to Wan 2.1's image branch ({len(skipped)} keys); nothing to load")
    if skipped:
        log.warning("%s: skipped %d keys of modules Wan 2.2 does not have (%s)", source, len(skipped), skipped[0])
    deltas: dict[str, list[Delta]] = defaultdict(list)
    scale = peft_scale(metadata, source)
    for module, slots in modules.items():
        for name, delta in module_deltas(module, slots, source, scale):
            deltas[name].append(delta)
    return LoraFile(dict(deltas), _describe(namings, families), skipped, source)


def split_key(key: str) -> tuple[str | None, str, str] | None:
    """``key`` -> (official module, role, how the file spells names), with module None for a skipped module (Wan 2.1
    image branch); None when the key matches no role or no module."""
    role = next((r for r in ROLE_SUFFIXES if key.endswith("." + r)), None)
    if role is None:
        return None
    spelled = key[: -len(role) - 1]
    prefixes = []
    underscore = next((p for p in UNDERSCORE_PREFIXES if spelled.startswith(p)), None)
    if underscore is not None:
        prefixes.append(UNDERSCORE_PREFIXES[underscore])
        spelled = spelled[len(underscore) :].replace(".", "_")  # kohya files mixing dots into the names
    else:
        while prefix := next((p for p in DOTTED_PREFIXES if spelled.startswith(p)), None):
            prefixes.append(DOTTED_PREFIXES[prefix])
            spelled = spelled[len(prefix) :]
    for spellings, skip in ((MODULE_SPELLINGS, False), (SKIPPED_SPELLINGS, True)):
        for naming, keymap in spellings:
            if (underscore is not None) != ("underscores" in keymap.name):
                continue
            module = keymap.lookup(spelled, reverse=True)
            if module is not None:
                how = f"{'+'.join(prefixes) or 'unprefixed'} keys, {naming} names"
                return (None if skip else module), role, how
    return None


def module_deltas(
    module: str, slots: dict[str, torch.Tensor], source: str, scale: Scale = lambda module, rank: 1.0
) -> list[tuple[str, Delta]]:
    """The (parameter name, delta) pairs of one module's tensors; ``scale``: of a low-rank pair without alpha."""
    slots = dict(slots)
    if "dora_scale" in slots:
        raise LoraError(f"{source}: {module} is a DoRA (dora_scale), which wanflow does not apply")
    alpha = slots.pop("alpha", None)
    alpha = None if alpha is None else float(alpha.float().reshape(-1)[0])
    out = []
    for kind, param in DELTA_PARAMS.items():
        if kind in slots:
            out.append((f"{module}.{param}", Full(slots.pop(kind))))
    if "down" in slots or "up" in slots or "bias" in slots:
        out += _low_rank(module, slots, alpha, source, scale)
    elif any(s.startswith(("hada_", "lokr_")) for s in slots):
        full, rank = (_loha if any(s.startswith("hada_") for s in slots) else _lokr)(module, slots, alpha, source)
        out.append((f"{module}.weight", Full(full, rank)))
    elif alpha is not None and not out:
        raise LoraError(f"{source}: {module} has an alpha but no LoRA factors")
    if slots:
        raise LoraError(f"{source}: {module} has tensors {sorted(slots)} that belong to no complete adapter")
    return out


def _low_rank(module: str, slots: dict, alpha: float | None, source: str, scale: Scale) -> list[tuple[str, Delta]]:
    down, up, bias = slots.pop("down", None), slots.pop("up", None), slots.pop("bias", None)
    if down is None or up is None:
        have, missing = ("up", "down") if down is None else ("down", "up")
        raise LoraError(f"{source}: {module} has a lora_{have} factor but no lora_{missing}")
    if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0] or any(n != 1 for n in up.shape[2:]):
        raise LoraError(
            f"{source}: {module}: rank mismatch, down {tuple(down.shape)} and up {tuple(up.shape)} (expected "
            "down (r, in) and up (out, r))"
        )
    factor = scale(module, down.shape[0]) if alpha is None else alpha / down.shape[0]
    out: list[tuple[str, Delta]] = [(f"{module}.weight", LowRank(down, up, factor))]
    if bias is not None:  # PEFT's lora_B bias, scaled like lora_B
        out.append((f"{module}.bias", Full(bias.float() * factor)))
    return out


def _loha(module: str, slots: dict, alpha: float | None, source: str) -> tuple[torch.Tensor, int]:
    """LyCORIS LoHa: ``(w1a @ w1b) * (w2a @ w2b) * alpha / rank`` (Tucker cores ``t1``/``t2`` for convolutions)."""
    try:
        w1a, w1b, w2a, w2b = (slots.pop(f"hada_{k}").float() for k in ("w1_a", "w1_b", "w2_a", "w2_b"))
        t1, t2 = slots.pop("hada_t1", None), slots.pop("hada_t2", None)
        w1 = _tucker(t1, w1a, w1b) if t1 is not None else w1a @ w1b
        w2 = _tucker(t2, w2a, w2b) if t2 is not None else w2a @ w2b
        rank = w1b.shape[0]
        return w1 * w2 * (1.0 if alpha is None else alpha / rank), rank
    except (KeyError, RuntimeError) as e:
        raise LoraError(f"{source}: {module}: LoHa factors that do not fit together ({e})") from None


def _lokr(module: str, slots: dict, alpha: float | None, source: str) -> tuple[torch.Tensor, int | None]:
    """LyCORIS LoKr: ``kron(w1, w2) * scale``, each factor whole or a product; ``scale = alpha / rank`` when a factor
    is a product (rank = its inner size), else 1 (as ComfyUI and LyCORIS)."""
    try:
        factors, rank = [], None
        for i in (1, 2):
            whole = slots.pop(f"lokr_w{i}", None)
            if whole is None:
                a, b = slots.pop(f"lokr_w{i}_a").float(), slots.pop(f"lokr_w{i}_b").float()
                t = slots.pop(f"lokr_t{i}", None)
                rank = b.shape[0]
                whole = _tucker(t, a, b) if t is not None else a @ b
            factors.append(whole.float())
        w1, w2 = factors
        if w2.ndim == 4 and w1.ndim == 2:
            w1 = w1[:, :, None, None]
        scale = alpha / rank if alpha is not None and rank is not None else 1.0
        return torch.kron(w1, w2) * scale, rank
    except (KeyError, RuntimeError) as e:
        raise LoraError(f"{source}: {module}: LoKr factors missing or not fitting together ({e})") from None


def _tucker(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A LyCORIS Tucker product (as ComfyUI): core t (i, j, *kernel), a (i, out), b (j, in) -> (out, in, *kernel)."""
    return torch.einsum("i j ..., j r, i p -> p r ...", t.float(), b, a)


def _describe(namings: set[str], families: set[str]) -> str:
    adapters = sorted(families - {"alpha"})
    alpha = " + alpha" if "alpha" in families else ""
    return f"{'; '.join(sorted(namings))}: {', '.join(adapters)}{alpha}"


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:10]) + (f" (+{len(keys) - 10} more)" if len(keys) > 10 else "")


def check_fits(lora: LoraFile, shapes: Mapping[str, tuple[int, ...]], num_layers: int) -> None:
    """Every delta against the model's parameter shapes (``shapes``: official name -> shape); ``LoraError`` naming
    the module when one does not fit (another model size, another rank)."""
    for name, deltas in lora.deltas.items():
        if name not in shapes:
            raise LoraError(
                f"{lora.source}: {name} is not a parameter of this model ({num_layers} blocks, "
                f"{_width(shapes)} wide): a LoRA for another model size?"
            )
        shape = tuple(shapes[name])
        for delta in deltas:
            if isinstance(delta, LowRank):
                fits = delta.up.shape[0] == shape[0] and math.prod(delta.down.shape[1:]) == math.prod(shape[1:])
                got = f"rank-{delta.rank} factors down {tuple(delta.down.shape)}, up {tuple(delta.up.shape)}"
            else:
                fits = delta.tensor.numel() == math.prod(shape) and delta.tensor.shape[0] == shape[0]
                got = f"a delta of shape {tuple(delta.tensor.shape)}"
            if not fits:
                raise LoraError(
                    f"{lora.source}: {name.rsplit('.', 1)[0]}: {got} do not fit the parameter {shape} (a LoRA for "
                    f"another model size? this model is {_width(shapes)} wide with {num_layers} blocks)"
                )


def _width(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return shapes["blocks.0.self_attn.q.weight"][0] if "blocks.0.self_attn.q.weight" in shapes else -1


def lora_width(lora: LoraFile) -> int | None:
    """The DiT width a LoRA was made for, read from its self-attention factors (None if it has none)."""
    for name, deltas in sorted(lora.deltas.items()):
        if ".self_attn.q.weight" in name:
            d = deltas[0]
            return d.up.shape[0] if isinstance(d, LowRank) else d.tensor.shape[0]
    return None
