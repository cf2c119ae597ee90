"""One generation request: ``GenerateOptions`` holds what the user asked for (None = the task's default), and
``resolve`` fills the defaults and checks every value once, at the boundary, into a ``Request``.

The Python API takes the options as keywords, the CLI maps its flags onto them (``cli/generate.py``), and the
server's schema maps its fields onto them (``server/schemas.py``); none of them checks a value itself.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from wanflow.io.image import load_image
from wanflow.pipelines.presets import apply_preset
from wanflow.runtime.step_cache import CacheSettings, parse_cache
from wanflow.sampling.noise import draw_seed
from wanflow.sampling.solvers import SOLVERS
from wanflow.tasks import Task

log = logging.getLogger(__name__)

MAX_STEPS = 1000
MAX_GUIDE = 100.0


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


@dataclass(frozen=True)
class GenerateOptions:
    """What one generation asks for, with the same names for every task; None means the task's default."""

    prompt: str
    negative_prompt: str | None = None  # None: the task's; "": none (an empty negative prompt)
    image: Any = None  # a path or a PIL image (I2V needs one; with TI2V it selects image-to-video)
    size: tuple[int, int] | None = None  # (width, height); with an image: the pixel-area budget
    frames: int | None = None  # 4n + 1
    steps: int | None = None
    shift: float | None = None
    guide_scale: float | tuple[float, ...] | list[float] | None = None  # one value, or (low-noise, high-noise)
    solver: str | None = None  # a key of ``sampling.solvers.SOLVERS``; None: the preset's, else unipc
    seed: int | None = -1  # negative: draw one (reported in the result)
    preset: str | None = None  # a key of ``pipelines.presets.PRESETS``: values for the options left None
    float_timesteps: bool | None = None  # the DiT sees 1000 * sigma unrounded (step-distilled LoRAs); default False
    cache: str | None = None  # step cache: "magcache" or "magcache:THRESHOLD" (``runtime.step_cache``); None: off

    @classmethod
    def from_keywords(cls, prompt: str, **keywords: Any) -> GenerateOptions:
        """Options from keyword arguments, wanflow's names or diffusers' (``DIFFUSERS_NAMES``), with a clear error for
        a name that is neither."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - names - set(DIFFUSERS_NAMES))
        if unknown:
            raise ValueError(
                f"unknown generation options {unknown}; the options are {sorted(names - {'prompt'})}, or diffusers' "
                f"names {list(DIFFUSERS_NAMES)}"
            )
        return cls(prompt, **from_diffusers_names(keywords))


# diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` argument names, mapped onto the fields above by
# ``from_diffusers_names`` and nowhere else (docs/python-api.md). ``negative_prompt``, ``image`` and ``latents`` have
# the same name on both sides.
DIFFUSERS_NAMES = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "generator",
    "num_videos_per_prompt",
)


def from_diffusers_names(keywords: dict[str, Any]) -> dict[str, Any]:
    """Keywords with diffusers' names replaced by wanflow's (a None value counts as not given, as in diffusers):

    - ``height`` + ``width`` -> ``size=(width, height)`` (both or neither);
    - ``num_frames`` -> ``frames``, ``num_inference_steps`` -> ``steps``;
    - ``guidance_scale`` is the scale of diffusers' ``transformer``, the high-noise expert (or the only model), and
      ``guidance_scale_2`` that of ``transformer_2``, the low-noise expert (default: ``guidance_scale``), so
      ``guide_scale=(guidance_scale_2, guidance_scale)``: (low-noise, high-noise), the reference's order;
    - ``generator`` -> ``seed=generator.initial_seed()``: the seed is what counts, not the generator's device or state;
    - ``num_videos_per_prompt``: 1 only (one video per call).
    """
    given = {k: v for k, v in keywords.items() if k in DIFFUSERS_NAMES and v is not None}
    out = {k: v for k, v in keywords.items() if k not in DIFFUSERS_NAMES}
    renamed = {
        "size": _diffusers_size(given),
        "frames": given.get("num_frames"),
        "steps": given.get("num_inference_steps"),
        "guide_scale": _diffusers_guidance(given),
        "seed": _diffusers_seed(given),
    }
    for name, value in renamed.items():
        if value is None:
            continue
        if out.get(name) is not None:
            alias = {"size": "height/width", "guide_scale": "guidance_scale"}.get(name, "its diffusers name")
            raise ValueError(f"{name} is given twice, as {name} and as {alias}: pass one of them")
        out[name] = value
    if given.get("num_videos_per_prompt", 1) != 1:
        raise ValueError("wanflow makes one video per call: call it once per video (with another seed)")
    return out


def _diffusers_size(given: dict[str, Any]) -> tuple[int, int] | None:
    if ("height" in given) != ("width" in given):
        raise ValueError("pass height and width together (or size=(width, height)); the default size is the task's")
    return (given["width"], given["height"]) if "height" in given else None


def _diffusers_guidance(given: dict[str, Any]) -> float | tuple[float, float] | None:
    high, low = given.get("guidance_scale"), given.get("guidance_scale_2")
    if high is None:
        if low is not None:
            raise ValueError("guidance_scale_2 (the low-noise expert's scale) needs guidance_scale (the high-noise's)")
        return None
    return high if low is None else (low, high)


def _diffusers_seed(given: dict[str, Any]) -> int | None:
    generator = given.get("generator")
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be one torch.Generator (wanflow makes one video per call), got {type(generator).__name__}"
        )
    return generator.initial_seed()


@dataclass(frozen=True)
class Request:
    """Resolved options of one generation: every default filled, every value checked."""

    prompt: str
    negative_prompt: str
    image: Image.Image | None
    size: tuple[int, int]
    frames: int
    steps: int
    shift: float
    guide_scale: tuple[float, float] | float
    solver: str
    seed: int
    float_timesteps: bool = False
    cache: CacheSettings | None = None

    def require_image(self) -> Image.Image:
        if self.image is None:
            raise ValueError("this task needs an image: pass image=... (CLI: --image PATH)")
        return self.image


def resolve(options: GenerateOptions, task: Task, multiple: int | None = None, image_hint: str = "") -> Request:
    """Fill defaults from ``task`` and check every option. ``multiple``: what width and height must be multiples of
    (default the task's: VAE stride x patch); ``image_hint``: what a missing image is called on the caller's surface
    ("an input image: --image PATH")."""
    o = apply_preset(options, options.preset)
    if not isinstance(o.prompt, str):
        raise ValueError("prompt must be a string")
    if o.negative_prompt is not None and not isinstance(o.negative_prompt, str):
        raise ValueError('negative_prompt must be a string ("" for none) or None for the task\'s default')
    task.check_image(o.image is not None, image_hint or "an image: pass image=... (CLI: --image PATH)")
    frames = _frames(task.frames if o.frames is None else o.frames)
    steps = _steps(task.steps if o.steps is None else o.steps)
    shift = _shift(task.shift if o.shift is None else o.shift)
    solver = _solver(o.solver or "unipc")
    width, height = task.size if o.size is None else (int(o.size[0]), int(o.size[1]))
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}*{height}")
    image = None if o.image is None else load_image(o.image)
    if image is None:
        _check_size(task, width, height, multiple or task.size_multiple)
    return Request(
        prompt=o.prompt,
        negative_prompt=task.negative_prompt if o.negative_prompt is None else o.negative_prompt,
        image=image,
        size=(width, height),
        frames=frames,
        steps=steps,
        shift=shift,
        guide_scale=_guide(task.guide_scale if o.guide_scale is None else o.guide_scale, task),
        solver=solver,
        seed=draw_seed(o.seed),
        float_timesteps=bool(o.float_timesteps),
        cache=parse_cache(o.cache),
    )


def _frames(frames: int) -> int:
    frames = int(frames)
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frame_num must be 4n+1 (1, 5, 9, ..., 81, ...), got {frames}")
    return frames


def _steps(steps: int) -> int:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"sample_steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    return steps


def _shift(shift: float) -> float:
    shift = float(shift)
    if not 0 < shift <= 100:
        raise ValueError(f"sample_shift must be in (0, 100], got {shift}")
    return shift


def _solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown sample_solver {solver!r}; choose one of {sorted(SOLVERS)}")
    return solver


def _guide(value: float | tuple[float, ...] | list[float], task: Task) -> tuple[float, float] | float:
    values = [float(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    if len(values) not in (1, 2):
        raise ValueError(f"guide_scale takes one value, or two for (low-noise, high-noise); got {value!r}")
    if any(not 0.0 <= v <= MAX_GUIDE for v in values):
        raise ValueError(f"guide_scale must be between 0 and {MAX_GUIDE:g}, got {value!r}")
    if not task.is_moe:
        if len(values) == 2 and values[0] != values[1]:
            raise ValueError(f"{task.name} has one expert and takes one guide_scale, got {value!r}")
        return values[0]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _check_size(task: Task, width: int, height: int, multiple: int) -> None:
    if width % multiple or height % multiple:
        fit_w, fit_h = (max(multiple, n // multiple * multiple) for n in (width, height))
        raise ValueError(
            f"size {width}*{height} is not divisible by {multiple} (VAE stride x patch); try {fit_w}*{fit_h}"
        )
    if task.sizes and (width, height) not in task.sizes:
        trained = ", ".join(f"{w}*{h}" for w, h in task.sizes)
        log.warning(
            "size %d*%d is outside the sizes %s was trained at (%s); quality may suffer",
            width,
            height,
            task.name,
            trained,
        )


__all__ = ["DIFFUSERS_NAMES", "GenerateOptions", "Request", "from_diffusers_names", "latent_frames", "resolve"]
