"""``wanflow calibrate-cache``: measure a checkpoint's step-cache curve (``runtime.cache_curve``) by running a few
prompts uncached, and store it beside the weights as ``magcache.json``, where ``--cache magcache`` finds it. With
``--preview``, also fit the live-preview map of its VAE on the built-in shapes clips (``preview.json``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wanflow.cli.generate import EXAMPLE_PROMPT, add_sampler_arguments, sampler_keywords
from wanflow.cli.parsers import parse_size
from wanflow.tasks import TASKS

# Prompts for a checkpoint of the published kind when none are given (the built-in models take shapes prompts).
DEFAULT_PROMPTS = (
    EXAMPLE_PROMPT,
    "A sailing boat glides across a calm lake at sunset, mountains in the distance.",
    "A golden retriever runs along a beach, waves breaking behind it.",
    "A busy city street at night in the rain, neon signs reflected in puddles.",
)
BUILTIN_PROMPTS = 8  # shapes clips the built-in models are calibrated on
PREVIEW_CLIPS = 64  # shapes clips a preview map is fitted on
DATA_SEED = 2026  # the clips' seed: not one the evaluation scores


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="t2v-A14B", choices=sorted(TASKS), help="which model (default t2v-A14B)")
    p.add_argument(
        "--ckpt_dir", "--ckpt-dir", dest="ckpt_dir", help="checkpoint folder (default: the task's built-in model)"
    )
    p.add_argument("--prompts", nargs="+", help="prompts to calibrate on (default: 4 general ones, or shapes clips)")
    p.add_argument("--image", help="an input image for every prompt (i2v-A14B needs one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=parse_size, help="WIDTH*HEIGHT to calibrate at (default per task)")
    p.add_argument("--frame_num", "--frame-num", dest="frame_num", type=int, help="frames (default per task)")
    add_sampler_arguments(p, solver=None)
    p.add_argument("--out", help="where to write the curve (default: magcache.json in the checkpoint folder)")
    p.add_argument("--preview", action="store_true", help="also fit the live-preview map on the built-in shapes clips")


def run(args: argparse.Namespace) -> int:
    from wanflow.builtin import builtin_checkpoint
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.pipelines.pipeline import WanPipeline, checkpoint_task
    from wanflow.pipelines.request import GenerateOptions, resolve
    from wanflow.runtime.cache_curve import CURVE_FILE, calibrate
    from wanflow.tasks import get_task

    layout = detect_layout(args.ckpt_dir or builtin_checkpoint(args.task))
    task = checkpoint_task(layout, get_task(args.task))
    prompts, images = calibration_inputs(args, task)
    sampling = sampler_keywords(args)
    sampling |= {k: v for k, v in (("size", args.size), ("frames", args.frame_num)) if v is not None}
    request = resolve(GenerateOptions(prompts[0], image=images[0] if images else None, **sampling), task)
    pipe = WanPipeline.from_pretrained(layout, task=task)
    curve = calibrate(pipe, prompts, images, seed=args.seed, **sampling)
    out = Path(args.out) if args.out else layout.root / CURVE_FILE
    made_with = {
        "source": f"wanflow calibrate-cache on {len(prompts)} prompts, seeds from {args.seed}",
        "task": task.name,
        "solver": request.solver,
        "shift": request.shift,
        "guide_scale": request.guide_scale,
        "size": request.size,
        "frames": request.frames,
    }
    out.write_text(json.dumps(curve.to_json(**made_with)) + "\n")
    low = min(min(pair) for pair in curve.ratios)
    print(f"wrote {out}: {curve.steps} steps, ratios from {low:.4f} to {max(max(p) for p in curve.ratios):.4f}")
    if args.preview:
        fit_preview(pipe, layout.root)
    return 0


def calibration_inputs(args: argparse.Namespace, task) -> tuple[list[str], list | None]:
    """The prompts (and images) to run: ``--prompts`` (with ``--image``), else shapes clips for a built-in model (with
    their first frames where the task needs an image), else ``DEFAULT_PROMPTS``."""
    from wanflow.io.image import load_image

    if args.prompts or args.ckpt_dir:
        prompts = list(args.prompts or DEFAULT_PROMPTS)
        task.check_image(args.image is not None, "an input image: --image PATH")
        return prompts, None if args.image is None else [load_image(args.image)] * len(prompts)
    from PIL import Image

    from wanflow.data.shapes import first_frame, sample_clips

    width, height = task.size
    clips = sample_clips(DATA_SEED, BUILTIN_PROMPTS, height, width, task.frames)
    images = [Image.fromarray(first_frame(c, height, width)) for c in clips] if task.image == "required" else None
    return [c.prompt for c in clips], images


def fit_preview(pipe, root: Path) -> None:
    """Fit ``pipe``'s VAE preview map on shapes clips (``runtime.preview.fit_to_vae``); write ``preview.json``."""
    from wanflow.data.shapes import render, sample_clips
    from wanflow.io.video import from_uint8
    from wanflow.runtime.preview import NOISE, PREVIEW_FILE, fit_to_vae

    width, height = pipe.task.size
    clips = sample_clips(DATA_SEED + 1, PREVIEW_CLIPS, height, width, pipe.task.frames)
    videos = [from_uint8(render(c, pipe.task.frames, height, width)) for c in clips]
    fitted = fit_to_vae(pipe.vae, videos, seed=DATA_SEED)
    source = f"wanflow calibrate-cache --preview: least squares on {len(clips)} shapes clips, latent noise {NOISE}"
    (root / PREVIEW_FILE).write_text(json.dumps(fitted.to_json(source=source)) + "\n")
    print(f"wrote {root / PREVIEW_FILE}")
