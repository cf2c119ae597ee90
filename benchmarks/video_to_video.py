"""What video to video's strength does on a built-in model: each source is a rendered clip of one (colour, shape,
direction); the prompt asks for another that differs in all three, on the same background. Per strength, the share
of videos in which the evaluator's detector (``wanflow.evaluation.detect``) finds the prompt's colour, shape and
direction, the share in which it still finds the source's, the share with no object it can name (a shape half way
between the two), and the PSNR against the source; the first row is the plain run (no video), the model's own
adherence to the same prompts, and the second the source through the VAE alone, where the lowest strengths tend.

    python benchmarks/video_to_video.py --task t2v-A14B --pairs 36
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from wanflow.data.shapes import COLOURS, DIRECTIONS, SHAPES, Clip, combo_clips, render
from wanflow.evaluation.detect import detect
from wanflow.io.video import from_uint8, to_uint8
from wanflow.pipelines.pipeline import WanPipeline

ASPECTS = ("colour", "shape", "direction")


def pairs(n: int, width: int, height: int, frames: int, seed: int) -> list[tuple[Clip, Clip]]:
    """``n`` (source, target) clips: the target differs from the source in colour, shape and direction."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = tuple(str(rng.choice(names)) for names in (list(COLOURS), SHAPES, DIRECTIONS))
        b = tuple(str(rng.choice([x for x in names if x != a[k]])) for k, names in enumerate((list(COLOURS), SHAPES,
                                                                                            DIRECTIONS)))  # fmt: skip
        source = combo_clips(int(rng.integers(1 << 31)), [a], 1, height, width, frames)[0]
        out.append((source, dataclasses.replace(source, colour=b[0], shape=b[1], direction=b[2])))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def run(pipe: WanPipeline, cases: list[tuple[Clip, Clip]], strength: float | None, frames: int) -> dict[str, float]:
    """The figures of one row: the plain run (``strength`` None), video to video, or (``strength`` 0) the source
    through the VAE alone (encode, decode: what the lowest strength tends to)."""
    width, height = pipe.task.size
    follows, keeps, psnrs, lost = {a: 0 for a in ASPECTS}, {a: 0 for a in ASPECTS}, [], 0
    t0 = time.perf_counter()
    for i, (source, target) in enumerate(cases):
        pixels = render(source, frames, height, width)
        if strength == 0:
            with torch.inference_mode():
                out = to_uint8(pipe.vae.decode(pipe.encode_image(from_uint8(pixels)[None]))[0])
        else:
            video = {} if strength is None else dict(video=pixels, strength=strength)
            out = to_uint8(pipe(target.prompt, seed=i, frames=frames, progress=None, **video).frames)
        found = detect(out)
        lost += found.colour is None
        for aspect in ASPECTS:
            follows[aspect] += getattr(found, aspect) == getattr(target, aspect)
            keeps[aspect] += getattr(found, aspect) == getattr(source, aspect)
        psnrs.append(psnr(out, pixels))
    n = len(cases)
    return {
        **{f"follows {a}": follows[a] / n for a in ASPECTS},
        **{f"keeps {a}": keeps[a] / n for a in ASPECTS},
        "no object found": lost / n,
        "PSNR to source (dB)": float(np.mean(psnrs)),
        "s per video": (time.perf_counter() - t0) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="t2v-A14B")
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = WanPipeline.from_builtin(args.task)
    frames = pipe.task.frames
    cases = pairs(args.pairs, *pipe.task.size, frames, args.seed)
    rows = [("no video", run(pipe, cases, None, frames)), ("VAE only", run(pipe, cases, 0, frames))]
    rows += [(f"{s:g}", run(pipe, cases, s, frames)) for s in args.strengths]
    keys = list(rows[0][1])
    print(f"{args.task} built-in, {args.pairs} pairs, {pipe.task.steps} steps, seed {args.seed}")
    print("| strength | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
