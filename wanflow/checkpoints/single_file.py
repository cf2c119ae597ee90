"""Single-file components as people download them: ComfyUI's repackaged safetensors (fp32 / bf16 / fp16, and FP8
with or without scales), city96's GGUF quantisations, and the official ``.pth`` files.

``read_single_file`` returns the file's tensors under wanflow's (official) names, with quantised weights kept as the
file stores them (``runtime.quantized.QuantTensor``), and says what the file is: which component (``kind``), and
the DiT's architecture inferred from its shapes. Formats read:

- safetensors; a prefix every key carries (``model.diffusion_model.``, ``diffusion_model.``, ...) is dropped;
- FP8, ComfyUI's older layout: ``<layer>.weight`` float8 + ``<layer>.scale_weight`` (a scalar) and a ``scaled_fp8``
  marker; its newer one: ``<layer>.weight_scale`` with ``_quantization_metadata`` in the file's metadata; and plain
  ``float8_e4m3fn`` / ``float8_e5m2`` weights without a scale;
- GGUF, read with the ``gguf`` package: DiTs (architecture "wan", the official key names) and umT5 encoders
  (architecture "t5encoder", llama.cpp's names, renamed to transformers').
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wanflow.checkpoints.io import CheckpointError, read_pth
from wanflow.configs import DIT_CONFIGS, DiTConfig
from wanflow.runtime import ggml
from wanflow.runtime.quantized import FP8_TYPES, QuantTensor

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "first_stage_model.", "vae.", "text_encoders.")
FP8_SCALES = ("scale_weight", "weight_scale")  # ComfyUI's older and newer names of a layer's FP8 scale
DROPPED = ("scaled_fp8", "scale_input", "input_scale")  # FP8 markers and input scales: nothing to dequantise
CONFIG_KEY = "wanflow.config"  # an optional JSON DiTConfig in the file's metadata (files wanflow writes)
DTYPE_NAMES = {v: k for k, v in FP8_TYPES.items()}

Tensor = torch.Tensor | QuantTensor


@dataclass
class SingleFile:
    path: Path
    format: str  # "safetensors", "gguf", "pth"
    state: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """ "dit", "vae", "t5", "lora", or "unknown", from the keys."""
        return component_kind(self.state)

    def storage(self) -> dict[str, int]:
        """How many tensors the file stores in each dtype or quantisation type."""
        counts: dict[str, int] = {}
        for value in self.state.values():
            name = value.qtype if isinstance(value, QuantTensor) else str(value.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def nbytes(self) -> int:
        return sum(
            v.nbytes if isinstance(v, QuantTensor) else v.numel() * v.element_size() for v in self.state.values()
        )


KINDS = {"dit": "a DiT (diffusion model)", "vae": "a VAE", "t5": "a umT5 text encoder", "lora": "a LoRA"}


def require_kind(file: SingleFile, kind: str, flag: str) -> None:
    """The file must hold ``kind``; ``flag`` names where the user gave it (``--dit``)."""
    if file.kind != kind:
        found = KINDS.get(file.kind, "no Wan component that wanflow recognises")
        raise CheckpointError(f"{flag} {file.path} holds {found}, not {KINDS[kind]}")


def component_kind(state: dict[str, object]) -> str:
    keys = set(state)
    if any(re.search(r"(lora_(down|up|A|B)|hada_w|lokr_w)", k) for k in keys):
        return "lora"
    if {"patch_embedding.weight", "head.head.weight"} <= keys:
        return "dit"
    if {"encoder.conv1.weight", "decoder.conv1.weight"} <= keys:
        return "vae"
    if "token_embedding.weight" in keys or "shared.weight" in keys or "encoder.embed_tokens.weight" in keys:
        return "t5"
    return "unknown"


def peek_kind(path: Path) -> str:
    """The component a file holds, from its keys alone (no tensor is read)."""
    try:
        if path.suffix == ".gguf":
            import gguf

            reader = gguf.GGUFReader(path)
            keys = list(_gguf_names({t.name: None for t in reader.tensors}, _architecture(reader)))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                keys = list(f.keys())
        else:
            keys = list(read_pth(path))
    except Exception:  # an unreadable file is not a component; reading it for real reports why
        return "unknown"
    return component_kind(strip_prefix(dict.fromkeys(keys)))


def strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_single_file(path: str | os.PathLike) -> SingleFile:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    if path.suffix == ".gguf":
        state, metadata, fmt = *_read_gguf(path), "gguf"
    elif path.suffix == ".safetensors":
        state, metadata, fmt = *_read_safetensors(path), "safetensors"
    elif path.suffix in (".pth", ".pt", ".bin"):
        state, metadata, fmt = dict(read_pth(path)), {}, "pth"
    else:
        raise CheckpointError(f"{path}: not a weights file (expected .safetensors, .gguf or .pth)")
    return SingleFile(path, fmt, strip_prefix(state), metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or not a safetensors file): {e}") from None
    _check_quant_metadata(path, metadata)
    return _group_fp8(raw), metadata


def _check_quant_metadata(path: Path, metadata: dict[str, str]) -> None:
    """ComfyUI's newer layout names each quantised layer's format; wanflow reads the float8 ones."""
    if "_quantization_metadata" not in metadata:
        return
    try:
        layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
    except (json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"{path}: _quantization_metadata is not valid JSON") from None
    for name, spec in layers.items():
        fmt = str(spec.get("format", "")) if isinstance(spec, dict) else str(spec)
        if "float8" not in fmt:
            raise CheckpointError(f"{path}: layer {name} is quantised as {fmt!r}, which wanflow does not read")


def _group_fp8(raw: dict[str, torch.Tensor]) -> dict[str, Tensor]:
    """float8 weights (with their scale keys, if any) -> QuantTensor; the scale keys and markers are consumed."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key.rsplit(".", 1)[-1] in (*FP8_SCALES, *DROPPED) or key in DROPPED:
            continue
        if value.dtype in DTYPE_NAMES:
            base = key.removesuffix(".weight")
            scale = next((raw[f"{base}.{s}"] for s in FP8_SCALES if f"{base}.{s}" in raw), None)
            state[key] = QuantTensor(tuple(value.shape), DTYPE_NAMES[value.dtype], value, scale)
        else:
            state[key] = value
    return state


def _read_gguf(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct or numpy errors for a damaged file
        raise CheckpointError(f"cannot read {path} (truncated or not a GGUF file): {e}") from None
    metadata = {name: _field_text(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    state: dict[str, Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memory map is read-only; wanflow never writes it
        for t in reader.tensors:
            state[t.name] = _gguf_tensor(path, t)
    return _gguf_names(state, _architecture(reader)), metadata


def _architecture(reader) -> str:
    field = reader.fields.get("general.architecture")
    return _field_text(field) if field is not None else ""


def _gguf_names(state: dict, architecture: str) -> dict:
    """A umT5 file's llama.cpp names -> transformers' (``maps.t5``); a DiT's names are the official ones already."""
    from wanflow.checkpoints.maps.t5 import GGUF_T5_ARCHS, from_gguf_names

    return from_gguf_names(state) if architecture in GGUF_T5_ARCHS else state


def _field_text(f) -> str:
    try:
        value = f.contents()
    except Exception:  # a field of a type the reader cannot render: not needed
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _gguf_tensor(path: Path, t) -> Tensor:
    qtype = t.tensor_type.name
    shape = tuple(int(n) for n in reversed(t.shape))
    if qtype not in ggml.FORMATS:
        raise CheckpointError(f"{path}: tensor {t.name} is stored as {qtype}, a type wanflow does not read")
    data = torch.from_numpy(t.data)
    if qtype not in ("F32", "F16", "BF16"):
        return QuantTensor(shape, qtype, data.view(torch.uint8))  # (its blocks are never written)
    # a float tensor is copied out of the read-only memory map: a model on the CPU in its dtype would hold the map
    # itself, and a LoRA's bias and norm deltas rebuild such parameters in place (writing the map: a crash)
    if qtype == "F16":
        data = data.view(torch.float16)
    elif qtype == "BF16":
        data = data.view(torch.uint8).reshape(-1).view(torch.bfloat16)
    return data.reshape(shape).clone()


def dit_config_from_file(file: SingleFile) -> DiTConfig:
    """The DiT's architecture from its shapes (and a ``wanflow.config`` in the metadata, which wanflow writes)."""
    s = file.state
    if any(k.startswith("img_emb.") or ".k_img." in k for k in s):
        raise CheckpointError(
            f"{file.path} is a Wan 2.1 I2V / FLF2V DiT (CLIP image branch), which Wan 2.2 does not use"
        )
    stored = json.loads(file.metadata[CONFIG_KEY]) if CONFIG_KEY in file.metadata else {}
    try:
        dim, in_dim, *patch = s["patch_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
        inferred = dict(
            in_dim=in_dim,
            dim=dim,
            out_dim=s["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
            ffn_dim=s["blocks.0.ffn.0.weight"].shape[0],
            freq_dim=s["time_embedding.0.weight"].shape[1],
            text_dim=s["text_embedding.0.weight"].shape[1],
            num_layers=layers,
            patch_size=tuple(patch),
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the DiT architecture of {file.path}: {e}") from None
    heads = stored.get("num_heads") or _published_heads(dim)
    cfg = {**stored, **inferred, "num_heads": heads}
    cfg.setdefault("model_type", _model_type(file.path, in_dim, cfg["out_dim"]))
    try:
        return DiTConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file.path}: {e}") from None


def _published_heads(dim: int) -> int:
    """Every published Wan DiT has a head size of 128 (A14B: 5120 / 40, TI2V-5B: 3072 / 24)."""
    known = {cfg.dim: cfg.num_heads for cfg in DIT_CONFIGS.values()}
    return known.get(dim, max(1, dim // 128))


def _model_type(path: Path, in_dim: int, out_dim: int) -> str:
    from wanflow.tasks import task_for_channels

    try:
        return task_for_channels(in_dim, out_dim).model_type
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


class _Shape:
    """A tensor's shape without its data (to infer an architecture from a file's header)."""

    def __init__(self, shape):
        self.shape = tuple(int(n) for n in shape)


def peek_shapes(path: Path) -> SingleFile:
    """The file's keys and shapes only (safetensors: its header; GGUF: its memory map); no tensor is read."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                state = {k: _Shape(f.get_slice(k).get_shape()) for k in f.keys()}
                return SingleFile(path, "safetensors", strip_prefix(state), f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path} (truncated or not a safetensors file): {e}") from None
    return read_single_file(path)


def check_dit_task(path: str | os.PathLike, task: str, flag: str = "--dit") -> DiTConfig:
    """The DiT in ``path`` (from its header) must be one the task runs; the error names both."""
    from wanflow.tasks import get_task, task_for_model

    file = peek_shapes(Path(path))
    require_kind(file, "dit", flag)
    cfg = dit_config_from_file(file)
    want = get_task(task)
    if cfg.model_type != want.model_type:
        found = task_for_model(cfg.model_type).name
        raise CheckpointError(f"{flag} {file.path} holds a {found} DiT ({cfg.model_type}), but --task is {task}")
    return cfg
