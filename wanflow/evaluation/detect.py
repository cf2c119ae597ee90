"""Find the one object in a video with plain image processing, and name its colour, shape and direction.

numpy only. Per frame: the background is the median border colour; the foreground is the largest connected
set of pixels far from it in RGB; features are measured per frame and their median over frames is
classified, so a few bad frames (blur, noise, a flicker in a generated video) do not change the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wanflow.data.shapes import COLOURS

MIN_CONTRAST = 60.0  # RGB distance from the background an object must reach to count as found
MIN_AREA = 0.005  # smallest object, as a fraction of the frame area (dataset objects cover >= 2.9%)
WHITE_MAX_SATURATION = 0.3  # below this an object is white (if bright) or unnamed (if dull)
WHITE_MIN_VALUE = 0.55
STILL_FRACTION = 0.12  # motion below this fraction of the shorter side reads as "still" (dataset moves >= 0.30)
MIN_FOUND = 0.5  # fraction of frames that must show an object before anything is named
# Shapes by two moments of the object's mass, which blur moves little (a blur kernel's cumulants just add):
# an upward triangle's rows are skewed towards its base (skewness -2 sqrt(2) / 5 = -0.57; about -0.2 under a
# 5x5 blur of an 8-pixel triangle), a circle's and a square's not (|skew| < 0.1 under noise, blur, JPEG); and
# a square's fourth cumulant along its diagonals is half that along its axes (0.5, up to ~0.8 under heavy
# blur), a circle's (and a triangle's) about the same (~1, at least ~0.85).
TRIANGLE_MAX_SKEW = -0.15
SQUARE_MAX_DIAGONAL = 0.8
SOFT_FLOOR = 0.15  # distances below this fraction of the object's contrast weigh nothing in the moments


@dataclass
class Detection:
    """What `detect` saw; the names are None when it could not tell."""

    colour: str | None
    shape: str | None
    direction: str | None
    hue: float  # degrees in [0, 360) of the median object colour
    saturation: float  # [0, 1]
    value: float  # [0, 1]
    fill: float  # object area / bounding-box area (circle ~0.79, square ~1, triangle ~0.5)
    skew: float  # skewness of the object's rows (triangle ~-0.57, circle and square ~0)
    diagonal: float  # fourth cumulant along the diagonals / along the axes (square ~0.5, circle and triangle ~1)
    dx: float  # fitted displacement over the clip, pixels (+ right)
    dy: float  # fitted displacement over the clip, pixels (+ down)
    found: float  # fraction of frames where an object was found


def detect(video: np.ndarray) -> Detection:
    """Name the object in a (F, H, W, 3) uint8 video."""
    video = _check_video(video)
    frames, height, width, _ = video.shape
    distance = _distance_from_background(video)  # (F, H, W)
    peak = np.percentile(distance.reshape(frames, -1), 99, axis=1)  # (F,) the object's contrast
    mask = _largest_component(distance >= np.maximum(0.5 * peak, 0.5 * MIN_CONTRAST)[:, None, None])
    area = mask.sum(axis=(1, 2))
    found = (peak >= MIN_CONTRAST) & (area >= MIN_AREA * height * width)
    if found.mean() < MIN_FOUND:
        return Detection(None, None, None, *([math.nan] * 8), float(found.mean()))
    rgb = _object_colour(video[found], mask[found], distance[found], peak[found])
    hue, saturation, value = _hsv(rgb)
    fill = _fill(mask[found])
    skew, diagonal = _moments(_soft_weights(mask[found], distance[found], peak[found]))
    dx, dy = _displacement(mask, found)
    return Detection(
        colour=_name_colour(hue, saturation, value),
        shape=_name_shape(skew, diagonal),
        direction=_name_direction(dx, dy, min(height, width)) if found.sum() >= 2 else None,
        hue=hue,
        saturation=saturation,
        value=value,
        fill=fill,
        skew=skew,
        diagonal=diagonal,
        dx=dx,
        dy=dy,
        found=float(found.mean()),
    )


def measure(video: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(object RGB (3,), object area as a fraction of the frame, background RGB (3,)) of a (F, H, W, 3) uint8 video:
    medians over the frames that show the object (the object's NaN when none does); what the drift of a longer video
    is measured on (``evaluation.drift``)."""
    video = _check_video(video)
    frames, height, width, _ = video.shape
    distance = _distance_from_background(video)
    peak = np.percentile(distance.reshape(frames, -1), 99, axis=1)
    mask = _largest_component(distance >= np.maximum(0.5 * peak, 0.5 * MIN_CONTRAST)[:, None, None])
    area = mask.sum(axis=(1, 2)) / (height * width)
    found = (peak >= MIN_CONTRAST) & (area >= MIN_AREA)
    background = np.median(_background(video.astype(np.float32)), axis=0)
    if not found.any():
        return np.full(3, math.nan), math.nan, background
    colour = _object_colour(video[found], mask[found], distance[found], peak[found])
    return colour, float(np.median(area[found])), background


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(
            f"detect wants a (frames, height, width, 3) uint8 video, got shape {video.shape} dtype {video.dtype} "
            "(wanflow.io.video.to_uint8 converts a generated (3, F, H, W) tensor)"
        )
    if min(video.shape[:3]) < 1 or min(video.shape[1:3]) < 3:
        raise ValueError(f"video too small to find an object in: {video.shape}")
    return video


def _background(v: np.ndarray) -> np.ndarray:
    """(F, 3) each frame's median border colour, of a (F, H, W, 3) float32 video."""
    border = np.concatenate([v[:, 0], v[:, -1], v[:, 1:-1, 0], v[:, 1:-1, -1]], axis=1)  # (F, 2H + 2W - 4, 3)
    return np.median(border, axis=1)


def _distance_from_background(video: np.ndarray) -> np.ndarray:
    """(F, H, W) float32 RGB distance of every pixel from its frame's median border colour."""
    v = video.astype(np.float32)
    return np.sqrt(((v - _background(v)[:, None, None, :]) ** 2).sum(axis=-1))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: the largest 4-connected component of each frame's mask (min-label propagation)."""
    frames, height, width = mask.shape
    none = np.iinfo(np.int64).max
    index = np.arange(mask.size, dtype=np.int64).reshape(mask.shape)
    labels = np.where(mask, index, none)
    foreground = mask.reshape(-1)
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:], labels[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], labels[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], labels[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], labels[:, :, 1:], out=new[:, :, :-1])
        new[~mask] = none
        flat = new.reshape(-1)
        flat[foreground] = flat[flat[foreground]]  # pointer jumping: take the label of one's label
        if np.array_equal(new, labels):
            break
        labels = new
    counts = np.bincount(labels[mask], minlength=mask.size).reshape(frames, height * width)
    biggest = counts.argmax(axis=1) + np.arange(frames) * height * width
    return mask & (labels == biggest[:, None, None])


def _object_colour(video, mask, distance, peak) -> np.ndarray:
    """(3,) median over frames of the mean colour of the object's core (away from the blended edge)."""
    core = mask & (distance >= 0.75 * peak[:, None, None])
    core = np.where(core.any(axis=(1, 2))[:, None, None], core, mask)
    weights = core[..., None].astype(np.float32)
    means = (video * weights).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1)
    return np.median(means, axis=0)


def _hsv(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(c) / 255 for c in rgb)
    high, low = max(r, g, b), min(r, g, b)
    spread = high - low
    if spread == 0:
        hue = 0.0
    elif high == r:
        hue = 60 * ((g - b) / spread % 6)
    elif high == g:
        hue = 60 * ((b - r) / spread + 2)
    else:
        hue = 60 * ((r - g) / spread + 4)
    return hue, (spread / high if high > 0 else 0.0), high


def _palette_hues() -> dict[str, float]:
    return {name: _hsv(np.array(rgb))[0] for name, rgb in COLOURS.items() if name != "white"}


def hue_distance(a: float, b: float) -> float:
    """Degrees between two hues around the colour wheel, in [0, 180]."""
    d = abs(a - b) % 360
    return min(d, 360 - d)


def _name_colour(hue: float, saturation: float, value: float) -> str | None:
    if saturation < WHITE_MAX_SATURATION:
        return "white" if value >= WHITE_MIN_VALUE else None
    hues = _palette_hues()
    return min(hues, key=lambda name: hue_distance(hue, hues[name]))


def _fill(mask: np.ndarray) -> float:
    """Median over frames of the object's area / its bounding box's area."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (F, H), (F, W)
    height = rows.shape[1] - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
    width = cols.shape[1] - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1)
    return float(np.median(mask.sum(axis=(1, 2)) / (height * width)))


def _soft_weights(mask: np.ndarray, distance: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """(F, H, W) how much of each pixel is object, in [0, 1], near the object only (keeps blurred edges)."""
    alpha = np.clip((distance / peak[:, None, None] - SOFT_FLOOR) / (1 - SOFT_FLOOR), 0, 1)
    return alpha * _dilate(_dilate(mask))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """(F, H, W) bool grown by one pixel in all eight directions."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    height, width = mask.shape[1:]
    out = mask.copy()
    for i in range(3):
        for j in range(3):
            out |= padded[:, i : i + height, j : j + width]
    return out


def _moments(weights: np.ndarray) -> tuple[float, float]:
    """Median over frames of the row skewness and of the diagonal / axis fourth-cumulant ratio."""
    height, width = weights.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width]
    m2y, m3y, k4y = _cumulants(weights.sum(axis=2), 1.0)
    k4x = _cumulants(weights.sum(axis=1), 1.0)[2]
    k4d = _cumulants(_project(weights, ys + xs, height + width - 1), math.sqrt(0.5))[2]
    k4a = _cumulants(_project(weights, ys - xs + width - 1, height + width - 1), math.sqrt(0.5))[2]
    skew = m3y / np.maximum(m2y, 1e-9) ** 1.5
    axes = k4x + k4y
    ratio = (k4d + k4a) / np.where(axes == 0, -1e-9, axes)
    return float(np.median(skew)), float(np.median(ratio))


def _project(weights: np.ndarray, bins: np.ndarray, n: int) -> np.ndarray:
    """(F, n) the weights summed along lines: ``bins`` (H, W) gives each pixel's line in [0, n)."""
    frames = weights.shape[0]
    index = bins[None] + n * np.arange(frames)[:, None, None]
    return np.bincount(index.reshape(-1), weights.reshape(-1), minlength=frames * n).reshape(frames, n)


def _cumulants(marginal: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame, the 2nd and 3rd central moments and the 4th cumulant of a (F, n) mass on a grid of ``step``."""
    p = marginal / np.maximum(marginal.sum(axis=1, keepdims=True), 1e-9)
    u = np.arange(marginal.shape[1]) * step
    u = u - (p * u).sum(axis=1, keepdims=True)
    m2, m3, m4 = ((p * u**k).sum(axis=1) for k in (2, 3, 4))
    return m2, m3, m4 - 3 * m2**2


def _name_shape(skew: float, diagonal: float) -> str:
    if skew < TRIANGLE_MAX_SKEW:
        return "triangle"
    return "square" if diagonal < SQUARE_MAX_DIAGONAL else "circle"


def _displacement(mask: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """Displacement over the whole clip of a least-squares line through the object's centroids, pixels."""
    frames, height, width = mask.shape
    area = np.maximum(mask.sum(axis=(1, 2)), 1)
    x = (mask.sum(axis=1) * (np.arange(width) + 0.5)).sum(axis=1) / area
    y = (mask.sum(axis=2) * (np.arange(height) + 0.5)).sum(axis=1) / area
    t = np.arange(frames)[found]
    if len(t) < 2:
        return 0.0, 0.0
    slope_x, slope_y = np.polyfit(t, np.stack([x[found], y[found]], axis=1), 1)[0]
    return float(slope_x * (frames - 1)), float(slope_y * (frames - 1))


def _name_direction(dx: float, dy: float, side: int) -> str:
    if max(abs(dx), abs(dy)) < STILL_FRACTION * side:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def score(detections: list[Detection], truths: list) -> dict[str, float]:
    """Accuracy per attribute and for all three at once; ``truths`` have colour, shape, direction (e.g. Clip)."""
    if len(detections) != len(truths) or not truths:
        raise ValueError(f"need as many detections as truths (and at least one): {len(detections)} vs {len(truths)}")
    result = {}
    hits = np.ones(len(truths), dtype=bool)
    for attribute in ("colour", "shape", "direction"):
        right = np.array(
            [getattr(d, attribute) == getattr(t, attribute) for d, t in zip(detections, truths, strict=True)]
        )
        result[attribute] = float(right.mean())
        hits &= right
    result["all"] = float(hits.mean())
    result["n"] = len(truths)
    return result


def format_scores(per_task: dict[str, dict]) -> str:
    """A plain-text table: one row per task, accuracy as percentages."""
    columns = ("colour", "shape", "direction", "all")
    name_width = max([len("task"), *(len(name) for name in per_task)])
    lines = [f"{'task':<{name_width}}  " + "  ".join(f"{c:>9}" for c in columns) + f"  {'n':>5}"]
    for name, scores in per_task.items():
        cells = "  ".join(f"{100 * scores[c]:>8.1f}%" for c in columns)
        lines.append(f"{name:<{name_width}}  {cells}  {scores.get('n', ''):>5}")
    return "\n".join(lines)
