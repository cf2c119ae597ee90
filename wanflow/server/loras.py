"""LoRAs per request, by name, from the folder the server was started with (``wanflow serve --lora_dir DIR``).

A client never sends a path: it names a LoRA the server lists (``GET /api/loras``): a ``NAME.safetensors`` file in the
folder, or a sub-folder ``NAME/`` of per-expert files (``high_noise_model`` / ``low_noise_model.safetensors``).
The files are read and checked against the model when the job is submitted (a bad name, file or fit answers 422), kept
in memory, loaded beside the weights for the job and taken off after it, so one job's LoRAs never leak into the next.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wanflow.checkpoints.lora import EXPERT_FILES, LoraFile, read_lora

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MAX_LORAS = 8  # per request


class LoraChoice(BaseModel):
    """One LoRA of a request: a name from the server's list, a strength, and optionally one expert."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a LoRA this server lists at GET /api/loras")
    strength: float = Field(1.0, ge=-10, le=10, description="how strongly it applies (1 = as trained)")
    expert: Literal["high", "low"] | None = Field(None, description="only on this expert (A14B); default: every")

    @field_validator("strength")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("strength must be a finite number")
        return value


def parse_choices(value):
    """A form field: ``"name[:strength][@expert], ..."`` (JSON bodies send the list of objects itself)."""
    if not isinstance(value, str):
        return value
    choices = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        item, _, expert = item.partition("@")
        name, _, strength = item.partition(":")
        choices.append({"name": name, "strength": strength or 1.0, **({"expert": expert} if expert else {})})
    return choices


class LoraLibrary:
    """The LoRAs of one folder, read once and kept."""

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise ValueError(f"--lora_dir {self.folder} is not a folder")
        self.cache: dict[str, tuple[float, dict[str | None, LoraFile]]] = {}
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        if self.folder is None:
            return []
        files = [p.stem for p in self.folder.glob("*.safetensors") if NAME.fullmatch(p.stem)]
        folders = [p.name for p in self.folder.iterdir() if p.is_dir() and _per_expert(p) and NAME.fullmatch(p.name)]
        return sorted(files + folders)

    def path(self, name: str) -> Path:
        """The file or folder of LoRA ``name``; a ``ValueError`` for anything the folder does not list."""
        if self.folder is None:
            raise ValueError("this server takes no LoRAs (start it with --lora_dir DIR)")
        if not NAME.fullmatch(name) or name not in self.names():
            raise ValueError(f"unknown LoRA {name!r}; this server has {self.names()} (GET /api/loras)")
        file = self.folder / f"{name}.safetensors"
        return file if file.is_file() else self.folder / name

    def read(self, name: str) -> dict[str | None, LoraFile]:
        """The parsed LoRA (cached until its file changes); a ``LoraError`` (a ValueError) for a bad file."""
        path = self.path(name)
        stamp = max(p.stat().st_mtime for p in ([path] if path.is_file() else path.glob("*.safetensors")))
        with self.lock:
            cached = self.cache.get(name)
            if cached is None or cached[0] != stamp:
                cached = self.cache[name] = (stamp, read_lora(path))
            return cached[1]


def lora_routes(api, library: LoraLibrary) -> None:
    """``GET /api/loras``: the names requests may use."""

    @api.get("/loras")
    def loras() -> dict:
        return {"loras": library.names()}


def _per_expert(folder: Path) -> bool:
    return any((folder / f).is_file() for f in EXPERT_FILES.values())


def check_loras(library: LoraLibrary | None, choices: Sequence[LoraChoice], pipe) -> None:
    """Every choice against the library and, when its pipeline is loaded, against the experts' weights."""
    from wanflow.pipelines.lora import assign_experts, check_on

    library = library or LoraLibrary(None)
    if len(choices) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} LoRAs per request, got {len(choices)}")
    for choice in choices:
        files = library.read(choice.name)
        if pipe is not None:
            experts = pipe.experts
            check_on(experts, assign_experts(files, choice.expert, list(experts), choice.name))


@contextmanager
def loras_applied(library: LoraLibrary | None, choices: Sequence[LoraChoice], pipe) -> Iterator[None]:
    """The request's LoRAs beside the pipeline's weights for the length of the block, then taken off."""
    if not choices:
        yield
        return
    from wanflow.pipelines.lora import assign_experts, load_lora, unload_lora

    library = library or LoraLibrary(None)
    names = []
    try:
        for i, choice in enumerate(choices):
            targets = assign_experts(library.read(choice.name), choice.expert, list(pipe.experts), choice.name)
            names.append(load_lora(pipe, choice.name, choice.strength, name=f"{choice.name}#{i}", targets=targets))
        yield
    finally:
        for name in names:
            unload_lora(pipe, name)
