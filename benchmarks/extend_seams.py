"""Seams of a continued video against the same prompts made as one long video, on the built-in models: for each of
three prompts (the long-video test's), the model makes a 9-frame video, which is then continued to 17 frames
(``extend=``, windows of 9); the mean frame-to-frame change (grey levels) into each new window, beside the same
prompts made as one 17-frame long video with the same seed, and the mean change inside the windows.

    python benchmarks/extend_seams.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from wanflow.builtin import builtin_checkpoint
from wanflow.data.shapes import combo_clips, first_frame
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline

COMBOS = [("red", "circle", "right"), ("green", "square", "down"), ("blue", "triangle", "left")]
SEAMS = [8, 12]  # frame changes 8 -> 9 and 12 -> 13: into windows 2 and 3


def changes(video) -> np.ndarray:
    frames = to_uint8(video.frames).astype(np.float64)
    return np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for task in ("t2v-A14B", "i2v-A14B"):
        pipe = WanPipeline.from_pretrained(builtin_checkpoint(task), task=task)
        extended, long, inside = [], [], []
        for clip in combo_clips(0, COMBOS, 1, 64, 64, 9):
            image = Image.fromarray(first_frame(clip, 64, 64)) if task == "i2v-A14B" else None
            made = pipe(clip.prompt, image=image, seed=1)
            step = changes(pipe(clip.prompt, extend=made, frames=17, window_frames=9, seed=1))
            extended += [step[i] for i in SEAMS]
            inside.append(np.delete(step, SEAMS).mean())
            step = changes(pipe(clip.prompt, image=image, frames=17, window_frames=9, seed=1))
            long += [step[i] for i in SEAMS]
        print(
            f"{task}: seams of the continued videos {min(extended):.1f}-{max(extended):.1f}, of the long videos "
            f"{min(long):.1f}-{max(long):.1f}; inside the continued videos' windows {min(inside):.1f}-{max(inside):.1f}"
        )


if __name__ == "__main__":
    main()
