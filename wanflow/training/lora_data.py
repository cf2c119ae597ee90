"""The data folder of ``wanflow train-lora``, as the other trainers take it: ``name.mp4`` (or ``.mov`` / ``.webm`` /
``.mkv``, or an image ``.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``) beside ``name.txt`` holding its caption.

Each clip is read frame by frame as stored, every frame resized to cover the training size and centre-cropped to it,
and cut into ``windows`` windows of ``frames`` (4n + 1) consecutive frames, evenly spaced from its start to its end
(one window: its first frames). An image is a one-frame sample. Every file that cannot be used is named with its
reason in one error, so a folder is fixed in one pass, not one file per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wanflow.io.clip import read_still, read_video

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
CACHE_DIR = ".wanflow-cache"  # the latents and text states cached beside the data (``lora_cache``)


class DataError(ValueError):
    """A data folder with files that cannot be used; the message names each with its reason."""


@dataclass(frozen=True)
class Item:
    """One usable media file and its caption."""

    media: Path
    caption: str

    @property
    def is_image(self) -> bool:
        return self.media.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class ClipShape:
    """How a clip becomes training samples."""

    width: int
    height: int
    frames: int  # frames per window, 4n + 1
    windows: int = 1  # windows per clip, evenly spaced over it

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4n + 1 (1, 5, 9, ..., 81), got {self.frames}")
        if self.windows < 1:
            raise ValueError(f"windows must be at least 1, got {self.windows}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"the training size must be positive, got {self.width}x{self.height}")


def problems_error(folder: Path, problems: list[tuple[str, str]], total: int) -> DataError:
    lines = "".join(f"\n  {name}: {why}" for name, why in sorted(problems))
    return DataError(f"{folder}: {len(problems)} of {total} files cannot be used (fix or remove them):{lines}")


def scan_folder(folder: str | os.PathLike) -> list[Item]:
    """The media files of ``folder`` with their captions, sorted by name; a ``DataError`` naming every media file
    without a caption (or with an empty one), or when the folder holds no media at all."""
    items, problems, total = find_items(folder)
    if problems:
        raise problems_error(Path(folder).expanduser(), problems, total)
    return items


def find_items(folder: str | os.PathLike) -> tuple[list[Item], list[tuple[str, str]], int]:
    """The captioned media files of ``folder``, the (file, reason) of those without a usable caption, and the number
    of media files; a ``DataError`` for a folder that is missing or holds no media."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    media = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    if not media:
        kinds = ", ".join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)
        raise DataError(f"{folder} holds no clips: put videos or images ({kinds}) there, each beside NAME.txt")
    items, problems = [], []
    for path in media:
        caption_path = path.with_suffix(CAPTION_SUFFIX)
        if not caption_path.is_file():
            problems.append((path.name, f"no caption: {caption_path.name} is missing"))
            continue
        caption = _read_caption(caption_path)
        if caption is None:
            problems.append((path.name, f"{caption_path.name} is not UTF-8 text"))
        elif not caption:
            problems.append((path.name, f"{caption_path.name} is empty"))
        else:
            items.append(Item(path, caption))
    stems = [p.stem for p in media]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    problems += [(f"{s}.*", "several media files share this caption name; rename all but one") for s in twins]
    return items, problems, len(media)


def _read_caption(path: Path) -> str | None:
    try:
        return " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        return None


def window_starts(length: int, frames: int, windows: int) -> list[int]:
    """First frame of each window: ``windows`` starts evenly spaced over ``length`` frames (duplicates dropped)."""
    if windows == 1:
        return [0]
    span = length - frames
    return sorted({round(i * span / (windows - 1)) for i in range(windows)})


def load_item(item: Item, shape: ClipShape) -> np.ndarray:
    """(K, F, H, W, 3) uint8: the item's windows (an image: K = 1, F = 1); ``ValueError`` naming the file."""
    if item.is_image:
        return read_still(item.media, shape.width, shape.height)[None]
    video = read_video(item.media, shape.width, shape.height)
    if len(video) < shape.frames:
        raise ValueError(f"{item.media.name}: {len(video)} frames, fewer than the {shape.frames} a sample needs")
    starts = window_starts(len(video), shape.frames, shape.windows)
    return np.stack([video[s : s + shape.frames] for s in starts])


def read_problems(items: list[Item], shape: ClipShape) -> list[tuple[str, str]]:
    """Read every item once: (file, reason) of each that cannot be read or is too short."""
    problems = []
    for item in items:
        try:
            load_item(item, shape)
        except ValueError as e:
            name, _, why = str(e).partition(": ")
            problems.append((name, why))
    return problems
