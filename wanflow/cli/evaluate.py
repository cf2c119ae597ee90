"""``wanflow evaluate``: accuracy of generated videos on held-out prompts (built-in models)."""

from __future__ import annotations

import argparse
import time

from wanflow.cli.generate import add_sampler_arguments, sampler_keywords
from wanflow.cli.parsers import positive_int
from wanflow.configs import EXPERTS
from wanflow.evaluation.evaluate import CASES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="what to evaluate")
    p.add_argument(
        "--ckpt_dir",
        "--ckpt-dir",
        dest="ckpt_dir",
        help="checkpoint folder for a single case (default: the built-in model of each case)",
    )
    p.add_argument(
        "--per_combo",
        "--per-combo",
        dest="per_combo",
        type=positive_int,
        default=18,
        help="videos per held-out (colour, shape, direction) combination (18: 162 videos per case, one is 0.6 "
        "points; with 54, two seed sets of the same model differed by up to 9 points)",
    )
    p.add_argument("--expert", choices=EXPERTS, help="ablation: run only this expert for every step")
    p.add_argument(
        "--vae_only",
        "--vae-only",
        dest="vae_only",
        action="store_true",
        help="score the held-out clips encoded and decoded by the model's VAE (no DiT): the ceiling through that VAE",
    )
    p.add_argument(
        "--short_prompts",
        "--short-prompts",
        dest="short_prompts",
        action="store_true",
        help='prompts without the background, as people write them ("a red circle moving right")',
    )
    p.add_argument(
        "--seen",
        action="store_true",
        help="score 9 combinations seen in training instead (fresh clips): a validation set to choose settings on, "
        "so that the held-out figure is measured once, not tuned on",
    )
    p.add_argument(
        "--drift",
        action="store_true",
        help="videos of 3 windows instead: how far the object's colour and size and the background's colour move "
        "from window 1, with and without --window_anchor (t2v and i2v cases; try --per_combo 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_sampler_arguments(p, solver=None)
    p.add_argument(
        "--cache",
        metavar="magcache[:T]|easycache[:T[:START:END]]",
        help="generate with the step cache (magcache: see calibrate-cache; easycache: ComfyUI's EasyCache node)",
    )


def run(args: argparse.Namespace) -> int:
    from wanflow.evaluation.detect import format_scores
    from wanflow.evaluation.evaluate import seen_combos

    if args.ckpt_dir and len(args.cases) != 1:
        raise ValueError("--ckpt_dir evaluates one case: pass --cases with a single name")
    if args.vae_only and args.expert:
        raise ValueError("--vae_only runs no DiT, so no expert to choose: pass one of --vae_only and --expert")
    sampling = sampler_keywords(args) | ({"cache": args.cache} if args.cache else {})
    if args.vae_only and (args.short_prompts or sampling):
        raise ValueError(
            "--vae_only uses no prompt and no sampler: pass no --short_prompts, --sample_* or --cache with it"
        )
    if args.drift:
        return run_drift(args)
    combos = seen_combos() if args.seen else None
    start = time.perf_counter()
    results = evaluate_cases(args, combos, sampling)
    print(format_scores({case: result.scores for case, result in results.items()}))
    sharp = ", ".join(f"{case} {result.sharpness:.2f}" for case, result in results.items())
    print("sharpness (mean |gradient|, grey levels): " + sharp)
    what = f", only the {args.expert}-noise expert" if args.expert else ", VAE reconstructions" if args.vae_only else ""
    what += ", prompts without the background" if args.short_prompts else ""
    what += ", combinations seen in training" if args.seen else ", held-out combinations"
    what += "".join(f", {k} {','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sampling.items())
    print(f"{time.perf_counter() - start:.0f}s{what}")
    return 0


DRIFT_ANCHORS = (0.0, 1.0)


def run_drift(args: argparse.Namespace) -> int:
    """Drift per window of 3-window videos of each case, without and with the colour anchoring."""
    from wanflow.builtin import builtin_checkpoint
    from wanflow.evaluation.drift import evaluate_drift, format_drift
    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.pipelines.progress import TqdmProgress

    if args.vae_only or args.expert or args.short_prompts or args.seen or sampler_keywords(args):
        raise ValueError("--drift takes only --cases, --ckpt_dir, --per_combo and --seed")
    start, results = time.perf_counter(), {}
    progress = TqdmProgress()
    progress.start("videos", len(args.cases) * len(DRIFT_ANCHORS) * args.per_combo * 9)
    for case in args.cases:
        task, with_image = CASES[case]
        pipe = WanPipeline.from_pretrained(args.ckpt_dir or builtin_checkpoint(task), task=task)
        for anchor in DRIFT_ANCHORS:
            results[case, anchor] = evaluate_drift(pipe, with_image, anchor, args.per_combo, args.seed, progress)
    progress.end("videos")
    videos = next(iter(results.values())).videos
    print(f"drift against window 1, mean over {videos} videos per row (3 windows of 9 frames, overlap 4)")
    print(format_drift(results))
    print(f"{time.perf_counter() - start:.0f}s")
    return 0


def evaluate_cases(args: argparse.Namespace, combos: list | None, sampling: dict) -> dict:
    """Each case's ``Result``, with one progress bar over every video of the run."""
    from wanflow.builtin import builtin_checkpoint
    from wanflow.evaluation.evaluate import evaluate_case, evaluate_reconstruction, only_expert, video_count
    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.pipelines.progress import TqdmProgress
    from wanflow.tasks import get_task

    # A dense model has no experts to ablate: --expert skips it.
    cases = [case for case in args.cases if not args.expert or get_task(CASES[case][0]).is_moe]
    progress = TqdmProgress()
    progress.start("videos", len(cases) * video_count(args.per_combo, combos))
    results = {}
    for case in cases:
        task, with_image = CASES[case]
        pipe = WanPipeline.from_pretrained(args.ckpt_dir or builtin_checkpoint(task), task=task)
        if args.expert:
            only_expert(pipe, args.expert)
        if args.vae_only:
            results[case] = evaluate_reconstruction(pipe, args.per_combo, args.seed, combos, progress)
        else:
            kwargs = dict(short_prompts=args.short_prompts, sampling=sampling, progress=progress)
            results[case] = evaluate_case(pipe, with_image, args.per_combo, args.seed, combos, **kwargs)
    progress.end("videos")
    return results
