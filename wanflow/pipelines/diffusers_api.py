"""What a diffusers user gets back: ``WanPipelineOutput.frames`` in diffusers' shapes, and ``export_to_video``.

diffusers' ``WanPipeline`` returns ``output.frames`` as (batch, frames, height, width, 3) float32 in [0, 1] for
``output_type="np"`` (its default), (batch, frames, 3, height, width) in [0, 1] for ``"pt"``, and one list of PIL
images per video for ``"pil"``; wanflow returns the same for a call in diffusers' names (batch 1). The input names are
mapped in one place, ``pipelines.request.from_diffusers_names``; the whole correspondence is in docs/python-api.md.

Pixels: ``x * 0.5 + 0.5`` clamped to [0, 1] is exactly ``(clamp(x, -1, 1) + 1) / 2`` in float32 (both only scale by
powers of two around one rounding), so ``export_to_video`` of "np" or "pt" frames writes the very pixels that
``Video.save`` writes (255 x, truncated, as the reference). "pil" rounds to the nearest level, as diffusers does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wanflow.io.video import save_video

OUTPUT_TYPES = ("np", "pt", "pil")  # diffusers' names; its default is "np"


@dataclass
class WanPipelineOutput:
    """diffusers' output of a Wan pipeline: ``frames`` of one video in the shape ``output_type`` asks for."""

    frames: Any  # np.ndarray (1, F, H, W, 3) | torch.Tensor (1, F, 3, H, W) | list[list[PIL.Image.Image]]
    seed: int | None = None  # wanflow's addition: the seed the noise was drawn from


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; choose one of {list(OUTPUT_TYPES)} (diffusers' names)")


def postprocess(video: torch.Tensor, output_type: str = "np") -> Any:
    """(3, F, H, W) float in [-1, 1] -> one video's frames as diffusers' ``postprocess_video`` returns them."""
    check_output_type(output_type)
    frames = (video.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)  # (F, 3, H, W)
    if output_type == "pt":
        return frames[None]
    array = frames.permute(0, 2, 3, 1).numpy()  # (F, H, W, 3)
    if output_type == "np":
        return array[None]
    from PIL import Image

    return [[Image.fromarray(level) for level in (array * 255).round().astype(np.uint8)]]


def diffusers_output(video: torch.Tensor, output_type: str, return_dict: bool, seed: int | None) -> Any:
    frames = postprocess(video, output_type)
    return WanPipelineOutput(frames, seed) if return_dict else (frames,)


def export_to_video(
    video_frames: Sequence[Any] | np.ndarray | torch.Tensor, output_video_path: str | None = None, fps: int = 10
) -> str:
    """diffusers' ``export_to_video``, written by wanflow (``io.video.save_video``: H.264 MP4, GIF, or PNG frames for
    a path ending in '/'). ``video_frames``: one video, e.g. ``output.frames[0]``: (F, H, W, 3) float in [0, 1]
    (or a list of such frames), (F, 3, H, W) tensor in [0, 1], uint8 frames, or a list of PIL images. Returns the
    path (a temporary .mp4 when none is given, as diffusers)."""
    if output_video_path is None:
        output_video_path = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False).name
    save_video(_uint8_frames(video_frames), output_video_path, fps=fps)
    return os.fspath(output_video_path)


def _uint8_frames(video_frames: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
    """One video as (F, H, W, 3) uint8; float frames in [0, 1] scaled by 255 and truncated (diffusers' rule)."""
    if isinstance(video_frames, torch.Tensor):
        if video_frames.ndim != 4 or video_frames.shape[1] != 3:
            raise ValueError(f"expected (frames, 3, height, width) frames in [0, 1], got {tuple(video_frames.shape)}")
        video_frames = video_frames.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    frames = np.stack([np.asarray(frame) for frame in video_frames])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = " (output.frames holds a batch: pass output.frames[0])" if frames.ndim == 5 else ""
        raise ValueError(f"expected frames of (height, width, 3), got {tuple(frames.shape)}{hint}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames.astype(np.float32), 0, 1) * 255).astype(np.uint8)


__all__ = ["OUTPUT_TYPES", "WanPipelineOutput", "diffusers_output", "export_to_video", "postprocess"]
