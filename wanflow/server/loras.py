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
MAX_CALLS = 8  # strengths of one LoRA, one for each sampler call


class LoraChoice(BaseModel):
    """One LoRA of a request: a name from the server's list, a strength, and optionally one expert."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a LoRA this server lists at GET /api/loras")
    strength: float | list[float] = Field(
        1.0, description="how strongly it applies (1 = as trained), -10..10; or a list: one for each sampler call of "
        "its experts (sampler_calls)"
    )  # fmt: skip
    expert: Literal["high", "low"] | None = Field(None, description="only on this expert (A14B); default: every")

    @field_validator("strength")
    @classmethod
    def _finite(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_CALLS or not all(math.isfinite(v) and -10 <= v <= 10 for v in values):
            raise ValueError(f"strength: a finite number in -10..10, or a list of 1 to {MAX_CALLS} of them")
        return value

    def first(self) -> float:
        """The strength it loads at (the first call's)."""
        return self.strength[0] if isinstance(self.strength, list) else self.strength


def parse_choices(value):
    """A form field: ``"name[:strength][@expert], ..."``, a strength for each sampler call as ``S1;S2`` (JSON bodies
    send the list of objects itself)."""
    if not isinstance(value, str):
        return value
    choices = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        item, _, expert = item.partition("@")
        name, _, strength = item.partition(":")
        given = strength.split(";") if ";" in strength else strength or 1.0
        choices.append({"name": name, "strength": given, **({"expert": expert} if expert else {})})
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


def check_loras(library: LoraLibrary | None, choices: Sequence[LoraChoice], pipe, request=None) -> None:
    """Every choice against the library, its strengths for each sampler call against the resolved ``request``'s
    calls, and, when its pipeline is loaded, against the experts' weights."""
    from wanflow.pipelines.calls import check_strengths
    from wanflow.pipelines.lora import assign_experts, check_on

    library = library or LoraLibrary(None)
    if len(choices) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} LoRAs per request, got {len(choices)}")
    for choice in choices:
        files = library.read(choice.name)
        if isinstance(choice.strength, list) and request is not None:
            check_strengths(request, choice.expert, tuple(choice.strength), f"LoRA {choice.name}")
        if pipe is not None:
            experts = pipe.experts
            check_on(experts, assign_experts(files, choice.expert, list(experts), choice.name))


@contextmanager
def loras_applied(
    library: LoraLibrary | None, choices: Sequence[LoraChoice], pipe
) -> Iterator[dict[str, list[float]] | None]:
    """The request's LoRAs beside the pipeline's weights for the length of the block, then taken off; the block gets
    the strengths given for each sampler call, by the names they were loaded under (``call_loras``), or None."""
    if not choices:
        yield None
        return
    from wanflow.pipelines.lora import assign_experts, load_lora, unload_lora

    library = library or LoraLibrary(None)
    names, per_call = [], {}
    try:
        for i, choice in enumerate(choices):
            targets = assign_experts(library.read(choice.name), choice.expert, list(pipe.experts), choice.name)
            names.append(load_lora(pipe, choice.name, choice.first(), name=f"{choice.name}#{i}", targets=targets))
            if isinstance(choice.strength, list):
                per_call[names[-1]] = choice.strength
        yield per_call or None
    finally:
        for name in names:
            unload_lora(pipe, name)
