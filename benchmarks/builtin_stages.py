"""Where a built-in model's call goes: the pipeline's own stage timers, in one process, without start-up.

    python -m benchmarks.builtin_stages --threads 1 --repeats 9
    python -m benchmarks.builtin_stages --tasks t2v --repeats 5 --vae_only
    python -m benchmarks.builtin_stages --tasks t2v --repeats 3 --dtype bfloat16   # every component in bfloat16
    python -m benchmarks.builtin_stages --tasks t2v --repeats 3 --vae_only --dtype float16

Each model is loaded once and called ``--repeats`` times after one untimed call (the prompt of the held-out set's
first clip; i2v with that clip's first frame), seeds 0, 1, ...; the median of each stage is printed: ``encode``
(text, and the image for i2v), ``denoise`` (the 20 steps with CFG), ``decode`` (the VAE), and the whole call.
``--vae_only`` times the VAE decode of random latents of the task's shape instead (no text, no DiT). Run it on two
trees (``PYTHONPATH=OTHER_TREE``) to compare them; the first line names the tree that ran.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import wanflow
from wanflow.builtin import builtin_checkpoint
from wanflow.data.shapes import HELD_OUT, combo_clips, first_frame
from wanflow.evaluation.evaluate import CASES
from wanflow.pipelines.pipeline import WanPipeline

STAGES = ("encode", "denoise", "decode")


def load(case: str, dtype: str) -> WanPipeline:
    task, _ = CASES[case]
    return WanPipeline.from_pretrained(builtin_checkpoint(task), task=task, dtype=getattr(torch, dtype))


def time_calls(case: str, repeats: int, dtype: str) -> dict[str, float]:
    from PIL import Image

    pipe, with_image = load(case, dtype), CASES[case][1]
    width, height = pipe.task.size
    clip = combo_clips(0, sorted(HELD_OUT)[:1], 1, height, width, pipe.task.frames)[0]
    image = Image.fromarray(first_frame(clip, height, width)) if with_image else None
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "call")}
    for i in range(repeats + 1):
        start = time.perf_counter()
        video = pipe(clip.prompt, image=image, seed=i)
        if i:  # call 0 warms up
            times["call"].append(time.perf_counter() - start)
            for name in STAGES:
                times[name].append(video.timings[name])
    return {name: statistics.median(values) for name, values in times.items()}


def time_decodes(case: str, repeats: int, dtype: str) -> dict[str, float]:
    pipe = load(case, dtype)
    cfg, (width, height), frames = pipe.vae.cfg, pipe.task.size, pipe.task.frames
    shape = (1, cfg.z_dim, 1 + (frames - 1) // 4, height // cfg.stride[1], width // cfg.stride[2])
    latents = torch.randn(shape, dtype=pipe.vae.dtype)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            pipe.vae.decode(latents)
            if i:
                times.append(time.perf_counter() - start)
    return {"decode": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["t2v", "i2v", "ti2v"], choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per model (the median is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vae_only", action="store_true", help="time the VAE decode of random latents only")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="every component's (float16: the Python API's torch_dtype only)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tree = Path(wanflow.__file__).parent.parent
    print(f"tree {tree}, {args.dtype}, torch threads {torch.get_num_threads()}, {args.repeats} calls")
    columns = ("decode",) if args.vae_only else (*STAGES, "call")
    print("| case | " + " | ".join(f"{name} (ms)" for name in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for case in args.tasks:
        time_them = time_decodes if args.vae_only else time_calls
        medians = time_them(case, args.repeats, args.dtype)
        print(f"| {case} | " + " | ".join(f"{1000 * medians[name]:.1f}" for name in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
