"""What normalized attention guidance (NAG, ``runtime.nag``) does on a built-in model: a negative prompt at guidance 1.

At guidance 1 (the few-step LoRAs' setting) no unconditional pass runs, so a negative prompt does nothing; NAG makes
it act inside the prompt's own pass. The test here: each prompt names an object's colour, shape and direction, and
the negative prompt names the prompt's own colour, so a negative prompt that acts pulls the object away from that
colour; the shape and direction should stay. Four runs per video, same seed:

- ``g1``: guidance 1, no NAG (the negative prompt is not read);
- ``g1+nag``: guidance 1, NAG with the colour as its negative (scale 4, the authors' tau 2.5 and alpha 0.25, fixed
  before measuring, not tuned);
- ``cfg``: classifier-free guidance at the model's scale with the colour as the negative prompt (two passes a step);
- ``cfg+task``: the default run (the task's negative prompt), the baseline of what the model draws.

Reported per run: the share of videos whose object is found in the prompt's colour, shape and direction
(``evaluation.detect``), and the seconds per video. Combinations seen in training (``seen_combos``), fresh seeds.

    python benchmarks/nag_negative.py [--task t2v-A14B] [--per_combo 4] [--scale 4] [--preset lightning]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wanflow.data.shapes import combo_clips
from wanflow.evaluation.detect import detect
from wanflow.evaluation.evaluate import seen_combos
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.progress import quiet_calls


def runs(scale: float, colour: str, preset: str | None) -> dict[str, dict]:
    """The runs of one prompt; with a preset only the guidance-1 ones (the preset's guidance is 1: no CFG to
    compare)."""
    all_runs = {
        "g1": dict(guide_scale=1.0),
        "g1+nag": dict(guide_scale=1.0, nag_scale=scale, nag_negative_prompt=colour),
        "cfg": dict(negative_prompt=colour),
        "cfg+task": {},
    }
    return {name: options for name, options in all_runs.items() if not (preset and name.startswith("cfg"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="t2v-A14B")
    p.add_argument("--per_combo", type=int, default=4)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=500)
    p.add_argument("--preset", help="sample every run with this preset (lightning: 4 Euler steps, guidance 1)")
    args = p.parse_args()
    torch.set_num_threads(2)
    pipe = WanPipeline.from_builtin(args.task)
    width, height = pipe.task.size
    clips = combo_clips(args.seed, seen_combos(), args.per_combo, height, width, pipe.task.frames)
    hits = {name: np.zeros(3) for name in runs(args.scale, "", args.preset)}
    seconds = dict.fromkeys(hits, 0.0)
    for i, clip in enumerate(clips):
        prompt = f"a {clip.colour} {clip.shape} moving {clip.direction}"
        for name, options in runs(args.scale, clip.colour, args.preset).items():
            t0 = time.perf_counter()
            with quiet_calls():
                video = pipe(prompt, seed=args.seed + i, preset=args.preset, **options)
            seconds[name] += time.perf_counter() - t0
            found = detect(to_uint8(video.frames))
            hits[name] += [found.colour == clip.colour, found.shape == clip.shape, found.direction == clip.direction]
    n = len(clips)
    print(f"{args.task} built-in, {n} videos ({len(seen_combos())} seen combinations x {args.per_combo}), "
          f"negative prompt = the prompt's colour, NAG scale {args.scale}, preset {args.preset}")  # fmt: skip
    print(f"{'run':10s} {'colour':>7s} {'shape':>7s} {'direction':>9s} {'s/video':>8s}")
    for name, h in hits.items():
        colour, shape, direction = h / n
        print(f"{name:10s} {colour:7.2f} {shape:7.2f} {direction:9.2f} {seconds[name] / n:8.2f}")


if __name__ == "__main__":
    main()
