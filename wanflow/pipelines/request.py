"""One generation request: the user's arguments, filled with the task's defaults and validated at the boundary."""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass

from PIL import Image

from wanflow.configs import TaskSpec
from wanflow.io.image import load_image
from wanflow.pipelines.core import Conditioning
from wanflow.sampling.solvers import SOLVERS

log = logging.getLogger(__name__)

MAX_STEPS = 1000
MAX_GUIDE = 100.0


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


@dataclass(frozen=True)
class Request:
    """Resolved arguments of one generation (same names for every task)."""

    prompt: str
    negative_prompt: str
    image: Image.Image | None
    size: tuple[int, int]  # (width, height); with an image: the pixel-area budget (width * height)
    frames: int
    steps: int
    shift: float
    guide_scale: tuple[float, float] | float
    solver: str
    seed: int

    def require_image(self) -> Image.Image:
        if self.image is None:
            raise ValueError("this task needs an image: pass image=... (CLI: --image PATH)")
        return self.image


@dataclass
class Prepared:
    """What a task file hands to the shared loop: the latent shape, the conditioning, the output (width, height)."""

    shape: tuple[int, int, int, int]  # (C, T', H', W') of the noise
    cond: Conditioning
    size: tuple[int, int]


def draw_seed(seed: int | None) -> int:
    """The reference's rule: a negative seed draws one at random."""
    if seed is None or seed < 0:
        return random.randint(0, sys.maxsize)
    return int(seed)


def _guide(value: float | tuple[float, float] | list[float], spec: TaskSpec) -> tuple[float, float] | float:
    values = [float(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    if len(values) not in (1, 2):
        raise ValueError(f"guide_scale takes one value, or two for (low-noise, high-noise); got {value!r}")
    if any(not 0.0 <= v <= MAX_GUIDE for v in values):
        raise ValueError(f"guide_scale must be between 0 and {MAX_GUIDE:g}, got {value!r}")
    if spec.boundary is None:
        if len(values) == 2 and values[0] != values[1]:
            raise ValueError(f"{spec.name} has one expert and takes one guide_scale, got {value!r}")
        return values[0]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def resolve(
    spec: TaskSpec,
    stride: int,
    patch: int,
    prompt: str,
    negative_prompt: str | None = None,
    image=None,
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    steps: int | None = None,
    shift: float | None = None,
    guide_scale=None,
    solver: str = "unipc",
    seed: int | None = -1,
) -> Request:
    """Fill defaults from ``spec`` and check every argument; ``stride`` is the VAE's spatial stride."""
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    if spec.model_type == "i2v" and image is None:
        raise ValueError(f"{spec.name} needs an image: pass image=... (CLI: --image PATH)")
    if spec.model_type == "t2v" and image is not None:
        raise ValueError(f"{spec.name} takes no image; use an i2v or ti2v model for image-to-video")
    frames = spec.frames if frames is None else int(frames)
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frame_num must be 4n+1 (1, 5, 9, ..., 81, ...), got {frames}")
    steps = spec.steps if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"sample_steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    shift = spec.shift if shift is None else float(shift)
    if not 0 < shift <= 100:
        raise ValueError(f"sample_shift must be in (0, 100], got {shift}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown sample_solver {solver!r}; choose one of {sorted(SOLVERS)}")
    width, height = spec.size if size is None else (int(size[0]), int(size[1]))
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}*{height}")
    image = None if image is None else load_image(image)
    if image is None:
        _check_size(spec, width, height, stride * patch)
    return Request(
        prompt,
        spec.negative_prompt if not negative_prompt else negative_prompt,
        image,
        (width, height),
        frames,
        steps,
        shift,
        _guide(spec.guide_scale if guide_scale is None else guide_scale, spec),
        solver,
        draw_seed(seed),
    )


def _check_size(spec: TaskSpec, width: int, height: int, multiple: int) -> None:
    if width % multiple or height % multiple:
        fit_w, fit_h = (max(multiple, n // multiple * multiple) for n in (width, height))
        raise ValueError(
            f"size {width}*{height} is not divisible by {multiple} (VAE stride x patch); try {fit_w}*{fit_h}"
        )
    if spec.sizes and (width, height) not in spec.sizes:
        trained = ", ".join(f"{w}*{h}" for w, h in spec.sizes)
        log.warning(
            "size %d*%d is outside the sizes %s was trained at (%s); quality may suffer",
            width,
            height,
            spec.name,
            trained,
        )


__all__ = ["Prepared", "Request", "draw_seed", "latent_frames", "resolve"]
