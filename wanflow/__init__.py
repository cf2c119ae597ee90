"""wanflow: the Wan 2.2 video generation models in PyTorch.

    from wanflow import WanPipeline, export_to_video

    pipe = WanPipeline.from_builtin("t2v-A14B")  # or .from_pretrained("Wan2.2-T2V-A14B"), a folder or a Hub id
    video = pipe("a red circle moving right", seed=1)  # wanflow's names: a Video
    frames = pipe(prompt="a red circle moving right", num_inference_steps=20).frames[0]  # diffusers' names
    export_to_video(frames, "circle.mp4", fps=8)

The names below are imported on first use, so ``import wanflow`` (and the command line's start) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "WanPipeline": "wanflow.pipelines.pipeline",
    "WanImageToVideoPipeline": "wanflow.pipelines.pipeline",
    "WanVideoToVideoPipeline": "wanflow.pipelines.pipeline",
    "DiffusionPipeline": "wanflow.pipelines.pipeline",
    "RuntimeOptions": "wanflow.pipelines.pipeline",
    "Video": "wanflow.pipelines.pipeline",
    "GenerateOptions": "wanflow.pipelines.request",
    "WanPipelineOutput": "wanflow.pipelines.diffusers_api",
    "export_to_video": "wanflow.pipelines.diffusers_api",
    "load_image": "wanflow.io.image",
}

if TYPE_CHECKING:
    from wanflow.io.image import load_image
    from wanflow.pipelines.diffusers_api import WanPipelineOutput, export_to_video
    from wanflow.pipelines.pipeline import (
        DiffusionPipeline,
        RuntimeOptions,
        Video,
        WanImageToVideoPipeline,
        WanPipeline,
        WanVideoToVideoPipeline,
    )
    from wanflow.pipelines.request import GenerateOptions


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wanflow' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "DiffusionPipeline",
    "GenerateOptions",
    "RuntimeOptions",
    "Video",
    "WanImageToVideoPipeline",
    "WanPipeline",
    "WanPipelineOutput",
    "WanVideoToVideoPipeline",
    "export_to_video",
    "load_image",
]
