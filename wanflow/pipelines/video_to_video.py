"""Video to video (SDEdit): the run starts from a given video's latents noised to the sigma of a step part way down
the schedule, and denoises only the steps from there, as diffusers' ``WanVideoToVideoPipeline`` and a sampler's
"denoise" below 1 in ComfyUI do. It is an option of every task, not a task: the task's own conditioning (I2V's
image, TI2V's first frame, a last frame) is built as without it, and an A14B run picks its experts by the timesteps
that remain, so a low strength runs the low-noise expert only (the community's "refiner" pass).

``strength`` s of an N-step schedule runs its last ``int(N * s)`` steps (diffusers' rule) and starts at the sigma of
the first of them, ``x = (1 - sigma) * x0 + sigma * noise``. The video is read at its own size and frame count unless
the request names others (frames: its first ones; size: scaled to cover it and centre-cropped, Lanczos).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from wanflow.io.clip import read_frames
from wanflow.io.image import resize_center_crop
from wanflow.io.video import from_uint8
from wanflow.pipelines.windows import latent_frames, pixel_count
from wanflow.sampling.schedule import Schedule

DEFAULT_STRENGTH = 0.8  # diffusers' WanVideoToVideoPipeline default


def read_video(source: Any, strength: Any, frames: int | None) -> tuple[list[Image.Image], float]:
    """The frames a request starts from (its first ``frames``, default the most that are 4n+1) and the strength."""
    if source is None:
        if strength is not None:
            raise ValueError("strength is how much of a given video to redo: pass video=... (CLI: --video PATH)")
        return [], 0.0
    video = read_frames(source, frames)  # (only the frames asked for are decoded)
    strength = DEFAULT_STRENGTH if strength is None else strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1: from noise; diffusers' default 0.8), got {strength!r}")
    if frames is not None and frames > len(video):
        raise ValueError(f"the video has {len(video)} frames; frame_num {frames} needs that many")
    return video[: frames or whole_latents(len(video))], float(strength)


def read_extended(source: Any, video: Any) -> list[Image.Image]:
    """The frames of a video to continue (the most that are 4n+1; ``pipelines.long_video``); not beside ``video``."""
    if source is None:
        return []
    if video is not None:
        raise ValueError("extend continues a video, video= redoes one: pass one of them")
    frames = read_frames(source)
    return frames[: whole_latents(len(frames))]


def whole_latents(frames: int) -> int:
    """The most of ``frames`` pixel frames that are 4n+1 (whole latent frames)."""
    return pixel_count(latent_frames(frames))


def video_size(video: list[Image.Image], multiple: int) -> tuple[int, int]:
    """The video's own size, rounded down to ``multiple`` (its centre is kept): the size a request without one gets."""
    width, height = video[0].size
    if width < multiple or height < multiple:
        raise ValueError(f"the video is {width}x{height}; this model needs at least {multiple}x{multiple}")
    return width // multiple * multiple, height // multiple * multiple


def video_pixels(video: list[Image.Image], width: int, height: int) -> torch.Tensor:
    """(1, 3, F, height, width) in [-1, 1]: each frame scaled to cover the size and centre-cropped (as it is, if it
    has that size already)."""
    sized = [f if f.size == (width, height) else resize_center_crop(f, width, height) for f in video]
    return from_uint8(np.stack([np.asarray(f) for f in sized]))[None]


def start_step(steps: int, strength: float) -> int:
    """The first step a strength runs: the last ``int(steps * strength)`` steps run (diffusers' rule)."""
    ran = min(int(steps * strength), steps)
    if ran < 1:
        raise ValueError(f"strength {strength:g} of {steps} steps runs no step: use at least {1 / steps:.3g}")
    return steps - ran


def from_video(
    schedule: Schedule, strength: float, x0: torch.Tensor, noise: torch.Tensor
) -> tuple[Schedule, torch.Tensor]:
    """The steps that remain and the latents they start from: ``x0`` noised to the first one's sigma."""
    k = start_step(schedule.num_steps, strength)
    tail = Schedule(schedule.sigmas[k:], schedule.timesteps[k:], first_moved=schedule.first_moved and k == 0)
    sigma = 1.0 if tail.first_moved else float(tail.sigmas[0])  # (a first sigma moved off 1 noises as 1)
    return tail, (1.0 - sigma) * x0.to(noise) + sigma * noise
