"""Where each component lives in the two checkpoint layouts people have on disk.

Official (``Wan-AI/Wan2.2-*``)::

    high_noise_model/ low_noise_model/     config.json + diffusion_pytorch_model*.safetensors (A14B experts)
    config.json + diffusion_pytorch_model*  (TI2V-5B: one DiT at the root)
    Wan2.1_VAE.pth | Wan2.2_VAE.pth         (a .safetensors with the same stem is preferred when present)
    models_t5_umt5-xxl-enc-bf16.pth
    google/umt5-xxl/                        tokenizer

Diffusers (``Wan-AI/Wan2.2-*-Diffusers``)::

    model_index.json transformer/ [transformer_2/] vae/ text_encoder/ tokenizer/ scheduler/

In diffusers ``transformer`` is the high-noise expert and ``transformer_2`` the low-noise one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from wanflow.checkpoints.io import CheckpointError
from wanflow.configs import DENSE, HIGH, LOW

OFFICIAL_EXPERTS = {HIGH: "high_noise_model", LOW: "low_noise_model"}
DIFFUSERS_EXPERTS = {HIGH: "transformer", LOW: "transformer_2"}
OFFICIAL_VAES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
DEFAULTS_FILE = "wanflow.json"  # optional: {"task": name, "defaults": {...TaskSpec overrides}}


@dataclass(frozen=True)
class Layout:
    """Paths of the components of one checkpoint folder. A component that is absent is ``None``."""

    kind: str  # "official" | "diffusers" | "files" (single files, each component a file or a folder)
    root: Path
    experts: dict[str, Path]  # {"high": folder, "low": folder} or {"dense": folder}; "files": a file each
    vae: Path | None  # official: a weights file; diffusers: a folder
    text_encoder: Path | None  # official: a weights file; diffusers: a folder
    tokenizer: Path | str | None  # a folder; "files" may name a Hugging Face repo id

    def task_defaults(self) -> tuple[str | None, dict]:
        """The task name and sampling defaults stored beside the weights (``wanflow.json``), if any."""
        path = self.root / DEFAULTS_FILE
        if not path.is_file():
            return None, {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from None
        return data.get("task"), dict(data.get("defaults", {}))

    @property
    def is_moe(self) -> bool:
        return DENSE not in self.experts

    def require(self, component: str) -> Path:
        path = getattr(self, component)
        if path is None:
            names = {
                "vae": "a VAE (Wan2.1_VAE.pth / Wan2.2_VAE.pth or vae/)",
                "text_encoder": f"a text encoder ({OFFICIAL_T5} or text_encoder/)",
                "tokenizer": f"a tokenizer ({OFFICIAL_TOKENIZER}/ or tokenizer/)",
            }
            raise CheckpointError(f"{self.root} has no {names[component]}")
        return path


def _is_dit_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model*"))


def _official(root: Path) -> Layout | None:
    experts = {k: root / v for k, v in OFFICIAL_EXPERTS.items() if (root / v).is_dir()}
    if not experts and _is_dit_folder(root):
        experts = {DENSE: root}
    if not experts:
        return None
    if len(experts) == 1 and DENSE not in experts:
        missing = next(v for k, v in OFFICIAL_EXPERTS.items() if k not in experts)
        raise CheckpointError(f"{root} holds one expert but not {missing}/: both A14B experts are needed")
    vae = next(
        (
            root / f
            for f in OFFICIAL_VAES.values()
            if (root / f).exists() or (root / f).with_suffix(".safetensors").exists()
        ),
        None,
    )
    t5 = root / OFFICIAL_T5
    t5_found = t5.exists() or t5.with_suffix(".safetensors").exists()
    tokenizer = root / OFFICIAL_TOKENIZER
    return Layout("official", root, experts, vae, t5 if t5_found else None, tokenizer if tokenizer.is_dir() else None)


def _diffusers(root: Path) -> Layout | None:
    index = root / "model_index.json"
    if not index.is_file():
        return None
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{index} is not valid JSON: {e}") from None
    present = {k: root / v for k, v in DIFFUSERS_EXPERTS.items() if (root / v).is_dir()}
    if HIGH not in present:
        raise CheckpointError(f"{root} has a model_index.json but no transformer/ folder")
    experts = present if LOW in present else {DENSE: present[HIGH]}
    if LOW in present and not entries.get("boundary_ratio"):
        raise CheckpointError(f"{index} lists two transformers but no boundary_ratio")

    def folder(name: str) -> Path | None:
        return root / name if (root / name).is_dir() else None

    return Layout("diffusers", root, experts, folder("vae"), folder("text_encoder"), folder("tokenizer"))


def detect_layout(root: str | os.PathLike) -> Layout:
    """Find which layout ``root`` uses and where its components are; a clear error if it is neither."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CheckpointError(f"checkpoint folder not found: {root}")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint path is not a folder: {root}")
    layout = _diffusers(root) or _official(root) or _single_files(root)
    if layout is None:
        raise CheckpointError(
            f"{root} is not a Wan checkpoint folder: expected the official layout (high_noise_model/ and "
            "low_noise_model/, or config.json + diffusion_pytorch_model*.safetensors at the root), the diffusers "
            "layout (model_index.json with transformer/), or single files (.safetensors / .gguf: a DiT, a VAE, a "
            "umT5)"
        )
    return layout


# --- single files ---

FILE_SUFFIXES = (".safetensors", ".gguf", ".pth", ".pt")
COMFY_FOLDERS = ("diffusion_models", "unet", "vae", "text_encoders", "clip")  # ComfyUI's models/ subfolders
DEFAULT_TOKENIZER = "google/umt5-xxl"  # the umT5 tokenizer on the Hugging Face Hub


def files_layout(
    dit: Path | str | None = None,
    dit_low: Path | str | None = None,
    vae: Path | str | None = None,
    t5: Path | str | None = None,
    tokenizer: Path | str | None = None,
    base: Layout | None = None,
) -> Layout:
    """Components given one by one (``--dit``, ``--dit_low``, ``--vae``, ``--t5``, ``--tokenizer``), the rest taken
    from ``base`` (a checkpoint folder). ``dit`` is the dense DiT, or the high-noise expert when there are two. A
    file may be an ``hf://ORG/NAME[@REVISION]/PATH`` address: fetched once from the Hub (``hub.local_file``)."""
    from wanflow.checkpoints.hub import local_file

    dit, dit_low, vae, t5 = (None if p is None else local_file(p) for p in (dit, dit_low, vae, t5))
    experts = dict(base.experts) if base else {}
    if dit_low is not None or (dit is not None and base is not None and base.is_moe):
        experts.pop(DENSE, None)
        experts.update({k: Path(v) for k, v in ((HIGH, dit), (LOW, dit_low)) if v is not None})
    elif dit is not None:
        experts = {DENSE: Path(dit)}
    if set(experts) not in ({DENSE}, {HIGH, LOW}):
        raise CheckpointError("give the DiT (--dit), or both A14B experts (--dit for high noise, --dit_low for low)")
    root = base.root if base else Path(next(iter(experts.values()))).parent
    return Layout(
        "files",
        root,
        experts,
        Path(vae) if vae else (base.vae if base else None),
        Path(t5) if t5 else (base.text_encoder if base else None),
        tokenizer or (base.tokenizer if base else None) or _tokenizer_beside(t5) or DEFAULT_TOKENIZER,
    )


def _tokenizer_beside(t5: Path | None) -> Path | None:
    """A tokenizer folder next to the umT5 file (``google/umt5-xxl/`` or ``tokenizer/``), if there is one."""
    if t5 is None:
        return None
    for name in (OFFICIAL_TOKENIZER, "tokenizer"):
        if (Path(t5).parent / name / "tokenizer_config.json").is_file():
            return Path(t5).parent / name
    return None


def _single_files(root: Path) -> Layout | None:
    """A folder holding single files (or ComfyUI's models/ subfolders), each told apart by its keys; the two A14B
    experts by their names (``high`` / ``low``)."""
    from wanflow.checkpoints.single_file import peek_kind

    files = [p for d in (root, *(root / f for f in COMFY_FOLDERS)) if d.is_dir() for p in sorted(d.iterdir())]
    found: dict[str, list[Path]] = {}
    for path in files:
        if path.suffix in FILE_SUFFIXES and path.is_file():
            found.setdefault(peek_kind(path), []).append(path)
    dits = found.get("dit", [])
    if not dits:
        return None
    one = {"vae": found.get("vae", []), "t5": found.get("t5", [])}
    for kind, paths in one.items():
        if len(paths) > 1:
            raise CheckpointError(f"{root} holds more than one {kind} file ({', '.join(p.name for p in paths)})")
    high = [p for p in dits if "high" in p.name.lower()]
    low = [p for p in dits if "low" in p.name.lower()]
    if len(dits) == 1:
        experts = {"dit": dits[0]}
    elif len(dits) == 2 and len(high) == 1 and len(low) == 1:
        experts = {"dit": high[0], "dit_low": low[0]}
    else:
        raise CheckpointError(f"{root}: cannot tell the DiT files apart ({', '.join(p.name for p in dits)})")
    return files_layout(**experts, vae=next(iter(one["vae"]), None), t5=next(iter(one["t5"]), None))
