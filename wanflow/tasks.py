"""What a task is: one ``Task`` entry per task, and every other module reads it.

A task owns what differs between tasks: the model it runs, which inputs it takes, how its conditioning is built (one
module under ``pipelines/``), how many input channels its DiT has, the diffusers pipeline that runs it, its built-in
model and its sampling defaults. Adding a task is one entry in ``TASKS`` and one conditioning file.

This module imports nothing heavy: the command line reads it before torch is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wanflow.configs import VAE_CONFIGS

IMAGE_RULES = ("none", "required", "optional")  # whether a task takes a conditioning image

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

MASK_CHANNELS = 4  # I2V: one mask channel per pixel frame of a latent frame (4 frames per latent frame)


@dataclass(frozen=True)
class Task:
    """One task. The sampling defaults are the reference configs' (wan22.md §2.2); a checkpoint may override them
    in its ``wanflow.json`` (``with_overrides``), e.g. a model trained at other sizes such as the built-ins."""

    name: str  # what users pass as --task
    model_type: str  # the ``model_type`` of the DiT config this task runs
    vae: str  # key of ``VAE_CONFIGS``
    image: str  # one of IMAGE_RULES: "none", "required" or "optional"
    conditioning: str  # module whose ``prepare(pipe, request, cond) -> Prepared`` builds the noise shape and inputs
    image_channels: bool  # the DiT reads a mask and the image latent beside the noise (I2V: 4 + z channels more)
    diffusers_pipeline: str  # the diffusers pipeline class that runs this task
    builtin: str  # folder of the built-in model under ``wanflow/builtin``
    boundary: float | None  # MoE switch: t >= boundary * 1000 -> high-noise expert; None for a dense model
    guide_scale: tuple[float, float] | float  # (low-noise, high-noise) for MoE tasks, a float otherwise
    shift: float
    steps: int
    frames: int
    fps: int
    size: tuple[int, int]  # default (width, height)
    sizes: tuple[tuple[int, int], ...]  # (width, height) the model was trained at
    expand_timesteps: bool = False  # the tokens of a given first frame see t = 0 (diffusers' name; TI2V)
    last_image: bool = False  # takes a last frame beside the first (first-last frame: the mask marks both)
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT

    # Fields a checkpoint may override in its ``wanflow.json``.
    OVERRIDABLE = ("boundary", "guide_scale", "shift", "steps", "frames", "fps", "size", "sizes", "negative_prompt")

    def __post_init__(self) -> None:
        if self.image not in IMAGE_RULES:
            raise ValueError(f"task {self.name}: image must be one of {IMAGE_RULES}, got {self.image!r}")

    @property
    def is_moe(self) -> bool:
        return self.boundary is not None

    @property
    def z_dim(self) -> int:
        return VAE_CONFIGS[self.vae].z_dim

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE's spatial stride times the DiT's patch (2)."""
        return VAE_CONFIGS[self.vae].stride[1] * 2

    def in_channels(self, z_dim: int | None = None) -> int:
        """The DiT's input channels for latents of ``z_dim`` channels (default: this task's VAE)."""
        z = self.z_dim if z_dim is None else z_dim
        return z + (MASK_CHANNELS + z if self.image_channels else 0)

    @property
    def prepare(self) -> Callable:
        """The conditioning function, imported on first use (it needs torch)."""
        return importlib.import_module(self.conditioning).prepare

    def check_image(self, given: bool, needs: str = "an image: pass image=...") -> None:
        """The task's image rule; ``needs`` says what is missing in the caller's words (a flag, a form field)."""
        if self.image == "required" and not given:
            raise ValueError(f"{self.name} needs {needs}")
        if self.image == "none" and given:
            raise ValueError(f"{self.name} takes no image; use an i2v or ti2v model for image-to-video")

    def with_overrides(self, overrides: dict[str, Any]) -> Task:
        unknown = sorted(set(overrides) - set(self.OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown task defaults {unknown}; allowed: {list(self.OVERRIDABLE)}")
        fixed = dict(overrides)
        for key in ("size", "guide_scale"):
            if isinstance(fixed.get(key), list):
                fixed[key] = tuple(fixed[key])
        if "sizes" in fixed:
            fixed["sizes"] = tuple(tuple(s) for s in fixed["sizes"])
        return dataclasses.replace(self, **fixed)


# What the two A14B tasks share: the Wan 2.1 VAE, 40 steps, 81 frames at 16 fps, 720p and 480p in both orientations.
_A14B = dict(
    vae="wan2.1",
    steps=40,
    frames=81,
    fps=16,
    size=(1280, 720),
    sizes=((720, 1280), (1280, 720), (480, 832), (832, 480)),
)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="t2v-A14B",
            model_type="t2v",
            image="none",
            conditioning="wanflow.pipelines.t2v",
            image_channels=False,
            diffusers_pipeline="WanPipeline",
            builtin="t2v",
            boundary=0.875,
            guide_scale=(3.0, 4.0),
            shift=12.0,
            **_A14B,
        ),
        Task(
            name="i2v-A14B",
            model_type="i2v",
            image="required",
            conditioning="wanflow.pipelines.i2v",
            image_channels=True,
            diffusers_pipeline="WanImageToVideoPipeline",
            builtin="i2v",
            boundary=0.900,
            guide_scale=(3.5, 3.5),
            shift=5.0,
            last_image=True,
            **_A14B,
        ),
        Task(
            name="ti2v-5B",
            model_type="ti2v",
            vae="wan2.2",
            image="optional",
            conditioning="wanflow.pipelines.ti2v",
            image_channels=False,
            diffusers_pipeline="WanPipeline",
            builtin="ti2v",
            boundary=None,
            guide_scale=5.0,
            shift=5.0,
            steps=50,
            frames=121,
            fps=24,
            size=(1280, 704),
            sizes=((704, 1280), (1280, 704)),
            expand_timesteps=True,
        ),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def task_for_model(model_type: str) -> Task:
    """The task a DiT of this ``model_type`` runs."""
    for task in TASKS.values():
        if task.model_type == model_type:
            return task
    raise ValueError(f"no task runs a {model_type!r} model; known: {sorted(t.model_type for t in TASKS.values())}")


def task_for_channels(in_dim: int, out_dim: int) -> Task:
    """The task of a DiT with these input and output channels (a file that does not say its model type)."""
    for task in TASKS.values():
        if task.z_dim == out_dim and task.in_channels() == in_dim:
            return task
    raise ValueError(f"no Wan 2.2 task has a DiT with {in_dim} input and {out_dim} output channels")


__all__ = ["DEFAULT_NEGATIVE_PROMPT", "TASKS", "Task", "get_task", "task_for_channels", "task_for_model"]
