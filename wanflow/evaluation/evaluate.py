"""Generate videos for prompts whose (colour, shape, direction) was held out of training, find the object in each with
``detect``, and score colour, shape and direction per task. Also a sharpness figure (mean gradient magnitude).

``evaluate_reconstruction`` scores the same clips passed through the model's VAE alone (encode, decode): the most a
DiT can reach through that VAE, which tells apart what the VAE loses from what the DiT gets wrong.

``seen_combos`` is a validation set: combinations seen in training, on fresh clips and seeds. Choose settings there
and report them once on the held-out combinations, so the held-out figure is not tuned on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from wanflow.data.shapes import HELD_OUT, Clip, all_combos, combo_clips, first_frame, render
from wanflow.evaluation.detect import detect, score
from wanflow.io.video import from_uint8, to_uint8
from wanflow.pipelines.progress import Progress, quiet_calls

# What is evaluated per task: (task, use the clip's first frame as the input image)
CASES = {
    "t2v": ("t2v-A14B", False),
    "i2v": ("i2v-A14B", True),
    "ti2v": ("ti2v-5B", False),
    "ti2v+image": ("ti2v-5B", True),
}


def seen_combos(n: int = 9, seed: int = 123) -> list[tuple[str, str, str]]:
    """``n`` (colour, shape, direction) combinations that training shows, the same ones for the same ``seed``."""
    seen = [combo for combo in all_combos() if combo not in HELD_OUT]
    if not 0 < n <= len(seen):
        raise ValueError(f"n must be between 1 and {len(seen)} (the combinations seen in training), got {n}")
    picks = np.random.default_rng(seed).choice(len(seen), n, replace=False)
    return sorted(seen[i] for i in picks)


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
    chosen = pipe.experts[name]
    pipe.map_experts(lambda key, model: chosen)


def evaluate_case(
    pipe,
    with_image: bool,
    per_combo: int = 18,
    seed: int = 0,
    combos: list[tuple[str, str, str]] | None = None,
    short_prompts: bool = False,
    sampling: dict | None = None,
    progress: Progress | None = None,
) -> Result:
    """Score one pipeline on ``per_combo`` clips of every held-out combination (or of ``combos``), prompted with
    each clip's prompt or, with ``short_prompts``, its prompt without the background ("a red circle moving right");
    ``sampling`` overrides the model's defaults (``steps``, ``shift``, ``guide_scale``, ``solver``). ``progress``:
    each video advances its "videos" stage, and the generations then draw no bars of their own."""
    width, height = pipe.task.size

    def generated(i: int, clip: Clip) -> np.ndarray:
        image = _pil(first_frame(clip, height, width)) if with_image else None
        prompt = clip.short_prompt if short_prompts else clip.prompt
        return to_uint8(pipe(prompt, image=image, seed=seed + i, **(sampling or {})).frames)

    return _score(pipe, generated, per_combo, seed, combos, progress)


@torch.no_grad()
def evaluate_reconstruction(
    pipe,
    per_combo: int = 18,
    seed: int = 0,
    combos: list[tuple[str, str, str]] | None = None,
    progress: Progress | None = None,
) -> Result:
    """Score the clips of ``evaluate_case`` themselves, encoded and decoded by ``pipe.vae`` (no DiT, no prompt);
    ``progress`` as there."""
    width, height = pipe.task.size

    def reconstructed(i: int, clip: Clip) -> np.ndarray:
        video = from_uint8(render(clip, pipe.task.frames, height, width))[None].to(pipe.device)
        return to_uint8(pipe.vae.decode(pipe.vae.encode(video))[0])

    return _score(pipe, reconstructed, per_combo, seed, combos, progress)


def video_count(per_combo: int, combos: list[tuple[str, str, str]] | None = None) -> int:
    """How many videos one case scores: ``per_combo`` per combination (default: the held-out ones)."""
    return per_combo * len(combos or HELD_OUT)


def _score(
    pipe,
    video_of: Callable[[int, Clip], np.ndarray],
    per_combo: int,
    seed: int,
    combos: list | None,
    progress: Progress | None = None,
) -> Result:
    """Detect the object in ``video_of(i, clip)`` for ``per_combo`` clips of each combination and score them."""
    width, height = pipe.task.size
    clips = combo_clips(seed, sorted(combos or HELD_OUT), per_combo, height, width, pipe.task.frames)
    detections, sharp = [], []
    for i, clip in enumerate(clips):
        if progress is None:
            frames = video_of(i, clip)
        else:
            with quiet_calls():  # the run's bar reports the video
                frames = video_of(i, clip)
            progress.advance("videos")
        detections.append(detect(frames))
        sharp.append(sharpness(frames))
    return Result(score(detections, clips), float(np.mean(sharp)))


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)
