"""Generate videos for prompts whose (colour, shape, direction) was held out of training, find the object in each with
``detect``, and score colour, shape and direction per task. Also a sharpness figure (mean gradient magnitude)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wanflow.data.shapes import HELD_OUT, combo_clips, first_frame
from wanflow.evaluation.detect import detect, score
from wanflow.io.video import to_uint8

# What is evaluated per task: (task, use the clip's first frame as the input image)
CASES = {
    "t2v": ("t2v-A14B", False),
    "i2v": ("i2v-A14B", True),
    "ti2v": ("ti2v-5B", False),
    "ti2v+image": ("ti2v-5B", True),
}


def sharpness(frames: np.ndarray) -> float:
    """Mean absolute spatial gradient of the grey level, (F, H, W, 3) uint8 -> grey levels per pixel."""
    grey = frames.astype(np.float64).mean(-1)
    return float((np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=2)).mean()) / 2)


@dataclass
class Result:
    scores: dict[str, float]
    sharpness: float


def only_expert(pipe, name: str) -> None:
    """Ablation: use one expert (``high`` or ``low``) for every step."""
    chosen = pipe.experts.experts[name]
    pipe.experts.experts = {key: chosen for key in pipe.experts.experts}


def evaluate_case(
    pipe, with_image: bool, per_combo: int = 2, seed: int = 0, combos: list[tuple[str, str, str]] | None = None
) -> Result:
    """Score one pipeline on ``per_combo`` clips of every held-out combination."""
    width, height = pipe.task.size
    clips = combo_clips(seed, sorted(combos or HELD_OUT), per_combo, height, width, pipe.task.frames)
    detections, sharp = [], []
    for i, clip in enumerate(clips):
        image = first_frame(clip, height, width) if with_image else None
        video = pipe(clip.prompt, image=None if image is None else _pil(image), seed=seed + i)
        frames = to_uint8(video.frames)
        detections.append(detect(frames))
        sharp.append(sharpness(frames))
    return Result(score(detections, clips), float(np.mean(sharp)))


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)
