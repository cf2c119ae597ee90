"""A synthetic video dataset: one coloured shape moving in a straight line on a dark background.

Everything is deterministic from a seed and uses numpy only. Coordinates are in pixels with the pixel
(row i, column j) covering [j, j + 1) x [i, i + 1); x grows to the right and y grows downwards, so "up"
is -y. A clip's geometry (size, speed, start) is in pixels for the frame size it was sampled for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
# Hues 60 degrees apart (red 0, yellow 60, green 120, cyan 180, blue ~234, magenta 300) plus white,
# so the detector can tell every pair apart by hue alone (white by its low saturation).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (230, 230, 40),
    "green": (40, 210, 40),
    "cyan": (40, 220, 220),
    "blue": (40, 60, 240),
    "magenta": (220, 40, 220),
    "white": (235, 235, 235),
}
DIRECTIONS = ("left", "right", "up", "down", "still")
# Dark, so every object colour stands far from every background (tests check an RGB distance >= 150).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (50, 50, 50),
    "navy": (15, 20, 70),
    "brown": (60, 35, 20),
}

# (colour, shape, direction) never shown in training: every colour, shape and direction, and every pair of
# them, still appears in training in other combinations, so these test composition.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "left"),
        ("green", "circle", "up"),
        ("blue", "square", "right"),
        ("yellow", "circle", "down"),
        ("white", "triangle", "still"),
        ("cyan", "square", "up"),
        ("magenta", "circle", "left"),
        ("red", "square", "still"),
        ("blue", "triangle", "down"),
    }
)

SIZE_RANGE = (0.12, 0.20)  # object radius / half-side, as a fraction of the shorter frame side
TRAVEL_RANGE = (0.30, 0.45)  # distance moved over the clip, as a fraction of the shorter frame side
MARGIN = 1.0  # pixels kept free between the object and the frame edge (room for the anti-aliased edge)
MIN_SIDE = 16  # smallest frame side the geometry is designed for

_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


@dataclass(frozen=True)
class Clip:
    """One video's specification; `render` turns it into pixels."""

    shape: str  # one of SHAPES
    colour: str  # a key of COLOURS
    direction: str  # one of DIRECTIONS
    background: str  # a key of BACKGROUNDS
    size: float  # circle radius, square half-side, triangle half-width (= half-height), pixels
    speed: float  # pixels per frame along `direction`; 0 when still
    start: tuple[float, float]  # (x, y) centre of the object's bounding box in frame 0, pixels

    def __post_init__(self):
        _check_name("shape", self.shape, SHAPES)
        _check_name("colour", self.colour, COLOURS)
        _check_name("direction", self.direction, DIRECTIONS)
        _check_name("background", self.background, BACKGROUNDS)
        if self.size <= 0 or self.speed < 0:
            raise ValueError(f"size must be > 0 and speed >= 0, got size={self.size}, speed={self.speed}")

    @property
    def combo(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.direction)

    @property
    def short_prompt(self) -> str:
        """The prompt without its background: "a red circle moving right", as people write it."""
        motion = "staying still" if self.direction == "still" else f"moving {self.direction}"
        return f"a {self.colour} {self.shape} {motion}"

    @property
    def prompt(self) -> str:
        return f"{self.short_prompt} on a {self.background} background"

    def centres(self, frames: int) -> np.ndarray:
        """(frames, 2) float (x, y) centre per frame."""
        step = np.array(_STEP[self.direction], dtype=np.float64) * self.speed
        return np.asarray(self.start, dtype=np.float64) + np.arange(frames)[:, None] * step


def _check_name(kind: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(allowed)}")


def render(clip: Clip, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, height, width, 3) uint8: the shape, anti-aliased, on its background."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    centres = clip.centres(frames)
    _check_inside(clip, centres, height, width)
    alpha = _coverage(clip.shape, clip.size, centres, height, width)  # (F, H, W)
    levels = np.rint(alpha * 255).astype(np.uint8)
    return np.take(_blend_table(BACKGROUNDS[clip.background], COLOURS[clip.colour]), levels, axis=0)


def _blend_table(background: tuple[int, int, int], colour: tuple[int, int, int]) -> np.ndarray:
    """(256, 3) uint8: the pixel for each coverage level k / 255 (a lookup is much faster than blending)."""
    k = np.arange(256, dtype=np.float32)[:, None] / 255
    bg = np.asarray(background, dtype=np.float32)
    return np.rint(bg + k * (np.asarray(colour, dtype=np.float32) - bg)).astype(np.uint8)


def render_batch(clips: list[Clip], frames: int, height: int, width: int) -> np.ndarray:
    """(N, frames, height, width, 3) uint8."""
    out = np.empty((len(clips), frames, height, width, 3), dtype=np.uint8)
    for i, clip in enumerate(clips):
        out[i] = render(clip, frames, height, width)
    return out


def first_frame(clip: Clip, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: the conditioning image for image-to-video."""
    return render(clip, 1, height, width)[0]


def _check_inside(clip: Clip, centres: np.ndarray, height: int, width: int) -> None:
    low = centres.min(axis=0) - clip.size
    high = centres.max(axis=0) + clip.size
    if low.min() < 0 or high[0] > width or high[1] > height:
        raise ValueError(
            f"{clip} leaves the {width}x{height} frame within {len(centres)} frames; "
            "sample clips for the frame size and frame count you render"
        )


def _coverage(shape: str, size: float, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """(F, H, W) float32 in [0, 1]: the fraction of each pixel the shape covers (a one-pixel linear ramp)."""
    dx = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] - centres[:, 0, None, None].astype(np.float32)
    dy = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] - centres[:, 1, None, None].astype(np.float32)
    r = np.float32(size)
    if shape == "square":  # exact box-filter coverage of an axis-aligned square
        return _ramp(r + 0.5 - np.abs(dx)) * _ramp(r + 0.5 - np.abs(dy))
    if shape == "circle":
        return _ramp(r + 0.5 - np.sqrt(dx * dx + dy * dy))
    # Upward triangle: apex (0, -r), base corners (-r, r) and (r, r): its two slanted edges cut from the
    # bounding box (the box keeps the ramp of the sharp corners inside it, as for the other shapes).
    s = np.float32(1 / math.sqrt(5))
    slant = np.maximum(-(2 * dx + dy + r), -(-2 * dx + dy + r)) * s
    box = np.maximum(np.abs(dx), np.abs(dy)) - r
    return _ramp(0.5 - np.maximum(box, slant))


def _ramp(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0, out=x)


def sample_clips(
    seed: int,
    n: int,
    height: int,
    width: int,
    frames: int,
    exclude: set[tuple[str, str, str]] | frozenset[tuple[str, str, str]] = HELD_OUT,
) -> list[Clip]:
    """``n`` clips with (colour, shape, direction) uniform over the combinations not in ``exclude``."""
    _check_geometry(height, width, frames)
    _check_combos(exclude)
    combos = [c for c in all_combos() if c not in exclude]
    if not combos:
        raise ValueError("exclude leaves no (colour, shape, direction) combination to sample")
    rng = np.random.default_rng(seed)
    backgrounds = list(BACKGROUNDS)
    clips = []
    for _ in range(n):
        colour, shape, direction = combos[rng.integers(len(combos))]
        background = backgrounds[rng.integers(len(backgrounds))]
        clips.append(_place(rng, shape, colour, direction, background, height, width, frames))
    return clips


def held_out_clips(seed: int, n_per_combo: int, height: int, width: int, frames: int) -> list[Clip]:
    """``n_per_combo`` clips of every HELD_OUT combination, in sorted combination order."""
    return combo_clips(seed, sorted(HELD_OUT), n_per_combo, height, width, frames)


def combo_clips(
    seed: int, combos: list[tuple[str, str, str]], n_per_combo: int, height: int, width: int, frames: int
) -> list[Clip]:
    """``n_per_combo`` clips of each (colour, shape, direction) in ``combos``, in that order."""
    _check_geometry(height, width, frames)
    _check_combos(combos)
    rng = np.random.default_rng(seed)
    backgrounds = list(BACKGROUNDS)
    clips = []
    for colour, shape, direction in combos:
        for _ in range(n_per_combo):
            background = backgrounds[rng.integers(len(backgrounds))]
            clips.append(_place(rng, shape, colour, direction, background, height, width, frames))
    return clips


def all_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction), in a fixed order."""
    return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def _check_geometry(height: int, width: int, frames: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}")
    if frames < 2:
        raise ValueError(f"clips need at least 2 frames to show motion, got {frames}")


def _check_combos(combos) -> None:
    for colour, shape, direction in combos:
        _check_name("colour", colour, COLOURS)
        _check_name("shape", shape, SHAPES)
        _check_name("direction", direction, DIRECTIONS)


def _place(rng, shape, colour, direction, background, height, width, frames) -> Clip:
    """Draw size, travel and a start that keeps the object MARGIN pixels inside the frame throughout."""
    side = min(height, width)
    size = rng.uniform(*SIZE_RANGE) * side
    travel = 0.0 if direction == "still" else rng.uniform(*TRAVEL_RANGE) * side
    ux, uy = _STEP[direction]
    x = _start(rng, ux, travel, size, width)
    y = _start(rng, uy, travel, size, height)
    speed = travel / (frames - 1)
    return Clip(shape, colour, direction, background, float(size), float(speed), (float(x), float(y)))


def _start(rng, sign: int, travel: float, size: float, length: int) -> float:
    """A start coordinate on one axis so that [start, start + sign * travel] +- size fits the frame."""
    low = size + MARGIN + (travel if sign < 0 else 0.0)
    high = length - size - MARGIN - (travel if sign > 0 else 0.0)
    return rng.uniform(low, high)
