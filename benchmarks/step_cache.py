"""The step cache on the built-in models: block-stack runs, time and PSNR of cached against uncached generation.

    python -m benchmarks.step_cache                                   # every case, the default threshold
    python -m benchmarks.step_cache --cases t2v --cache magcache:0.15 --per_combo 1
    python -m benchmarks.step_cache --cases medium --repeats 3     # time only, where the DiT dominates the call
    python -m benchmarks.step_cache --cache easycache               # ComfyUI's EasyCache node's rule instead

For each held-out prompt (``--per_combo`` clips of each held-out combination: the clips, prompts, images and seeds
``wanflow evaluate`` uses), one uncached and one cached generation in the same process, alternating which runs
first. Times are summed over the prompts: the whole pipeline call (text, sampling, decoding) and its sampling stage.
PSNR compares the cached video's uint8 frames with the uncached video's (peak 255), averaged over the videos.
Adherence (colour / shape / direction) is ``wanflow evaluate --cache ...``'s business.

``medium`` is the random T2V-A14B-layout checkpoint of ``benchmarks.fewstep`` (two 8-block, 512-wide experts, 128x128,
9 frames, the reference's 40 steps with CFG) with the published T2V-A14B ratios (it has no calibration of its own):
time only (its weights are random), ``--repeats`` rounds of one uncached and one cached call after a warm-up round.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from wanflow.builtin import builtin_checkpoint
from wanflow.data.shapes import HELD_OUT, combo_clips, first_frame
from wanflow.evaluation.evaluate import CASES
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.easycache import EasyCache, EasyCacheSettings
from wanflow.runtime.step_cache import parse_cache


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def cache_hook(pipe: WanPipeline, settings):
    """The cache of one call at the task's defaults: MagCache with the checkpoint's calibration, or EasyCache at the
    task's shift."""
    if isinstance(settings, EasyCacheSettings):
        return EasyCache(settings, lambda call: pipe.task.shift)
    return pipe.step_cache(settings)


def reused(hook) -> int:
    """Steps whose DiT work was reused (one model call a step: the default solver's)."""
    return hook.reused_calls if isinstance(hook, EasyCache) else hook.reused_steps


def measure(case: str, settings, per_combo: int, seed: int) -> dict[str, float]:
    from PIL import Image

    task, with_image = CASES[case]
    pipe = WanPipeline.from_pretrained(builtin_checkpoint(task), task=task)
    width, height = pipe.task.size
    clips = combo_clips(seed, sorted(HELD_OUT), per_combo, height, width, pipe.task.frames)
    totals = {"plain": 0.0, "cached": 0.0, "plain_denoise": 0.0, "cached_denoise": 0.0}
    runs, psnrs = [], []
    pipe(clips[0].prompt, image=None if not with_image else Image.fromarray(first_frame(clips[0], height, width)))
    for i, clip in enumerate(clips):
        image = Image.fromarray(first_frame(clip, height, width)) if with_image else None
        videos = {}
        for name in ("plain", "cached") if i % 2 == 0 else ("cached", "plain"):
            hooks = [cache_hook(pipe, settings)] if name == "cached" else []
            start = time.perf_counter()
            video = pipe(clip.prompt, image=image, seed=seed + i, hooks=hooks)
            totals[name] += time.perf_counter() - start
            totals[f"{name}_denoise"] += video.timings["denoise"]
            videos[name] = to_uint8(video.frames)
            if hooks:
                runs.append(video.metadata["steps"] - reused(hooks[0]))
        psnrs.append(psnr(videos["cached"], videos["plain"]))
    return {
        "steps": pipe.task.steps,
        "runs": float(np.mean(runs)),
        "call_ratio": totals["plain"] / totals["cached"],
        "denoise_ratio": totals["plain_denoise"] / totals["cached_denoise"],
        "psnr": float(np.mean(psnrs)),
        "psnr_min": float(np.min(psnrs)),
        "videos": len(clips),
    }


def measure_medium(settings, repeats: int, seed: int) -> dict[str, float]:
    import tempfile
    from pathlib import Path

    from benchmarks.fewstep import write_medium

    with tempfile.TemporaryDirectory() as tmp:
        pipe = WanPipeline.from_pretrained(write_medium(Path(tmp) / "medium"), task="t2v-A14B")
        kw = dict(size=(128, 128), frames=9, seed=seed)
        totals = {"plain": 0.0, "cached": 0.0, "plain_denoise": 0.0, "cached_denoise": 0.0}
        for round_ in range(repeats + 1):  # round 0 warms up
            for name in ("plain", "cached") if round_ % 2 == 0 else ("cached", "plain"):
                hooks = [cache_hook(pipe, settings)] if name == "cached" else []
                start = time.perf_counter()
                video = pipe("a red circle moving right", hooks=hooks, **kw)
                if round_:
                    totals[name] += time.perf_counter() - start
                    totals[f"{name}_denoise"] += video.timings["denoise"]
                if hooks:
                    runs = video.metadata["steps"] - reused(hooks[0])
    return {
        "steps": video.metadata["steps"],
        "runs": float(runs),
        "call_ratio": totals["plain"] / totals["cached"],
        "denoise_ratio": totals["plain_denoise"] / totals["cached_denoise"],
        "psnr": math.nan,
        "psnr_min": math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=[*CASES, "medium"])
    parser.add_argument("--cache", default="magcache", help="the cached runs' setting (default: magcache)")
    parser.add_argument("--per_combo", type=int, default=2, help="clips per held-out combination (9 combinations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="medium: timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_cache(args.cache)
    prompts = args.per_combo * len(HELD_OUT)
    print(f"{settings}, {prompts} held-out prompts per case, torch threads {torch.get_num_threads()}")
    print("| case | block-stack runs (of steps) | call time ratio | sampling time ratio | PSNR mean (min), dB |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        if case == "medium":
            r = measure_medium(settings, args.repeats, args.seed)
        else:
            r = measure(case, settings, args.per_combo, args.seed)
        quality = f"{r['psnr']:.1f} ({r['psnr_min']:.1f})" if math.isfinite(r["psnr"]) else "- (random weights)"
        print(
            f"| {case} | {r['runs']:.1f} of {r['steps']} | {r['call_ratio']:.2f}x | {r['denoise_ratio']:.2f}x | "
            f"{quality} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
