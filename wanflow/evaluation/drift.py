"""Drift of a video longer than one window: per window, how far the object's colour, the object's size and the
background's colour have moved from window 1's, measured with ``detect``'s image processing on videos the built-in
models make for the held-out prompts, with and without the colour anchoring (``GenerateOptions.window_anchor``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wanflow.data.shapes import HELD_OUT, combo_clips, first_frame
from wanflow.evaluation.detect import measure
from wanflow.io.video import to_uint8
from wanflow.pipelines.progress import Progress, quiet_calls
from wanflow.pipelines.windows import latent_frames, pixel_count, plan_windows

WINDOW_FRAMES = 9  # the built-in models' clips
OVERLAP_FRAMES = 4
WINDOWS = 3


@dataclass
class Drift:
    """Means over the videos, per window after the first: distances from window 1's measures."""

    colour: list[float]  # RGB distance of the object's colour, grey levels (0-255)
    size: list[float]  # |area / window 1's area - 1|
    background: list[float]  # RGB distance of the background's colour, grey levels
    videos: int


def window_ranges(windows: int = WINDOWS) -> list[tuple[int, int]]:
    """(first, last + 1) pixel frames each window adds to the video."""
    window, overlap = latent_frames(WINDOW_FRAMES), OVERLAP_FRAMES // 4
    frames = pixel_count(window + (windows - 1) * (window - 1 - overlap))  # a later window: frame 0, overlap, new
    plan = plan_windows(frames, WINDOW_FRAMES, OVERLAP_FRAMES, "x", 0.0)
    return [(0 if start == 0 else pixel_count(start), pixel_count(end)) for start, end in plan.spans()]


def video_drift(frames: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """(windows - 1, 3): colour, size and background drift of each later window of (F, H, W, 3) uint8 ``frames``."""
    (c0, a0, b0), *later = [measure(frames[a:b]) for a, b in ranges]
    return np.array([[np.linalg.norm(c - c0), abs(a / a0 - 1), np.linalg.norm(b - b0)] for c, a, b in later])


def evaluate_drift(
    pipe, with_image: bool, anchor: float, per_combo: int = 2, seed: int = 0, progress: Progress | None = None
) -> Drift:
    """The mean drift of ``per_combo`` 3-window videos of every held-out combination (seeds ``seed + i``)."""
    ranges = window_ranges()
    clips = combo_clips(seed, sorted(HELD_OUT), per_combo, 64, 64, WINDOW_FRAMES)
    rows = []
    for i, clip in enumerate(clips):
        image = _pil(first_frame(clip, 64, 64)) if with_image else None
        with quiet_calls():
            video = pipe(
                clip.prompt,
                image=image,
                size=(64, 64),
                frames=ranges[-1][1],
                window_frames=WINDOW_FRAMES,
                window_overlap=OVERLAP_FRAMES,
                window_anchor=anchor,
                seed=seed + i,
            )
        rows.append(video_drift(to_uint8(video.frames), ranges))
        if progress is not None:
            progress.advance("videos")
    mean = np.nanmean(np.stack(rows), axis=0)  # (windows - 1, 3); a window without an object counts in none
    return Drift(*(mean[:, j].tolist() for j in range(3)), videos=len(rows))


def format_drift(results: dict[tuple[str, float], Drift]) -> str:
    lines = ["case  anchor  window  object colour  object size  background"]
    for (case, anchor), drift in results.items():
        for w, (c, s, b) in enumerate(zip(drift.colour, drift.size, drift.background, strict=True), start=2):
            size = f"{100 * s:.1f}%"
            lines.append(f"{case:<5} {anchor:<7g} {w:<7} {c:<14.1f} {size:<12} {b:.1f}")
    return "\n".join(lines)


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)


__all__ = ["Drift", "evaluate_drift", "format_drift", "video_drift", "window_ranges"]
