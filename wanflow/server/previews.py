"""Live previews of running jobs (issue 25), kept in the shared data folder (``Files.preview``) so that whichever
server a client follows the job through can send them: the worker running the job rewrites one small PNG every few
steps (atomically: a reader sees the old picture or the new one), the event stream reads it when it has changed, and
the worker removes it when the job ends."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from wanflow.sampling.hooks import Step, StepHook

log = logging.getLogger(__name__)

SIDE = 256  # pixels: previews (blurry anyway) are scaled down to this for the event stream
STEP_KEY = "wanflow-step"  # the PNG text chunk that says after how many steps the picture was made


def preview_hooks(pipe, path: Path) -> list[StepHook]:
    """The hook that keeps ``path`` updated (``runtime.preview``); none for a pipeline whose VAE has no preview map."""
    make = getattr(pipe, "preview", None)
    if make is None:
        return []
    try:
        return [make(lambda image, step: write_preview(path, image, step))]
    except ValueError as e:  # no preview map for this model's VAE: the job runs without one
        log.warning("no live preview for %s: %s", path.stem, e)
        return []


def write_preview(path: Path, image: Image.Image, step: Step) -> None:
    """The picture after ``step``; a preview that cannot be written is skipped (the job goes on without it)."""
    image = image.copy()
    image.thumbnail((SIDE, SIDE))
    info = PngImagePlugin.PngInfo()
    info.add_text(STEP_KEY, str(step.index + 1))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(temporary, format="PNG", pnginfo=info)
        os.replace(temporary, path)
    except OSError as e:
        log.warning("live preview of %s not written: %s", path.stem, e)
        temporary.unlink(missing_ok=True)


def clear_previews(folder: Path) -> int:
    """Removes what a killed worker left in ``folder`` (only where no job runs: a server alone, starting)."""
    left = [*folder.iterdir()] if folder.is_dir() else []
    for path in left:
        path.unlink(missing_ok=True)
    return len(left)


def read_preview(path: Path, seen: int | None) -> tuple[int, int, bytes] | None:
    """``(marker, steps done, PNG)`` of the picture at ``path`` if it is there and its marker (the file's change
    time) is not ``seen``; else None."""
    try:
        marker = path.stat().st_mtime_ns
        if marker == seen:
            return None
        png = path.read_bytes()
        with Image.open(io.BytesIO(png)) as image:
            steps = int(image.text.get(STEP_KEY, "0"))
    except (OSError, ValueError):  # not written yet, removed at the job's end, or replaced while read
        return None
    return marker, steps, png
