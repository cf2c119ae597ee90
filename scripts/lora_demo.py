"""The built-in t2v model learns a shape it has never drawn: a long horizontal bar, called a "plank" (a word its
word-level tokenizer has never seen). Renders the clips, trains a LoRA with ``train-lora``, and measures with the
evaluator's detector, on held-out prompts, how often the model draws a bar with the word and how well it still
follows prompts without it, before and after.

    python scripts/lora_demo.py --work /tmp/plank [--steps 600] [--clips 32] [--prior 32] [--self_prior 48]

The best balance measured so far (README, "Train a LoRA"): ``--clips 48 --prior 0 --self_prior 48 --steps 1500
--lr 3e-3 --batch_size 4 --seeds 4``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wanflow.data.shapes import BACKGROUNDS, COLOURS, HELD_OUT
from wanflow.evaluation.detect import _distance_from_background, _largest_component, detect
from wanflow.io.video import save_video

WORD = "plank"
SIZE, FRAMES = 64, 9
HALF = (20.0, 4.0)  # the bar's half-width and half-height, pixels: 40 x 8
TRAIN_DIRECTIONS = ("left", "right", "up", "down", "still")
COLOUR_NAMES = list(COLOURS)
HELD_OUT_BARS = [
    ("red", "up"),
    ("green", "left"),
    ("blue", "right"),
    ("white", "down"),
    ("cyan", "still"),
    ("yellow", "left"),
    ("magenta", "right"),
    ("green", "down"),
]  # (colour, direction) never trained


def render_bar(colour: str, direction: str, background: str, start: tuple[float, float], speed: float) -> np.ndarray:
    """(F, 64, 64, 3) uint8: an anti-aliased bar moving in a straight line."""
    steps = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[direction]
    grid = np.arange(SIZE, dtype=np.float64)
    bg, fg = np.array(BACKGROUNDS[background], float), np.array(COLOURS[colour], float)
    frames = []
    for f in range(FRAMES):
        cx, cy = start[0] + steps[0] * speed * f, start[1] + steps[1] * speed * f
        cover_x = np.clip(np.minimum(grid + 1, cx + HALF[0]) - np.maximum(grid, cx - HALF[0]), 0, 1)
        cover_y = np.clip(np.minimum(grid + 1, cy + HALF[1]) - np.maximum(grid, cy - HALF[1]), 0, 1)
        alpha = cover_y[:, None, None] * cover_x[None, :, None]
        frames.append(np.rint(bg + alpha * (fg - bg)).astype(np.uint8))
    return np.stack(frames)


def bar_clip(rng: np.random.Generator, colour: str, direction: str, background: str) -> np.ndarray:
    speed = 0.0 if direction == "still" else rng.uniform(1.6, 2.4)
    travel = speed * (FRAMES - 1)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[direction]
    lo_x, hi_x = HALF[0] + 1 + max(0, -dx) * travel, SIZE - HALF[0] - 1 - max(0, dx) * travel
    lo_y, hi_y = HALF[1] + 1 + max(0, -dy) * travel, SIZE - HALF[1] - 1 - max(0, dy) * travel
    return render_bar(colour, direction, background, (rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)), speed)


def prompt(colour: str, shape: str, direction: str, background: str) -> str:
    motion = "staying still" if direction == "still" else f"moving {direction}"
    return f"a {colour} {shape} {motion} on a {background} background"


def write_prior(folder: Path, count: int, seed: int = 7) -> None:
    """``count`` clips of the shapes the model already draws, with their usual prompts (held-out combinations
    excluded): prior preservation, so that the LoRA keeps prompts without the new word as they were."""
    from wanflow.data.shapes import render, sample_clips

    for i, clip in enumerate(sample_clips(seed, count, SIZE, SIZE, FRAMES)):
        save_video(render(clip, FRAMES, SIZE, SIZE), folder / f"prior{i:03d}.mp4", fps=8)
        (folder / f"prior{i:03d}.txt").write_text(clip.prompt + "\n")


def write_self_prior(folder: Path, count: int, seed: int = 11) -> None:
    """``count`` clips that the BASE model generates itself for prompts without the word (the known shapes in the
    training colours and directions, held-out combinations excluded), captioned with those prompts: prior
    preservation by self-distillation, so that where the word is absent the LoRA learns to reproduce the base
    model, not the rendered shapes (which the base draws differently)."""
    from wanflow.data.shapes import sample_clips
    from wanflow.pipelines.pipeline import WanPipeline

    pipe = WanPipeline.from_builtin("t2v-A14B", device="cpu")
    for i, clip in enumerate(sample_clips(seed, count, SIZE, SIZE, FRAMES)):
        save_video(frames_of(pipe, clip.prompt, 1000 + i), folder / f"self{i:03d}.mp4", fps=8)  # seeds != eval's
        (folder / f"self{i:03d}.txt").write_text(clip.prompt + "\n")


def write_clips(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    held = set(HELD_OUT_BARS)
    combos = [(c, d) for c in COLOUR_NAMES for d in TRAIN_DIRECTIONS if (c, d) not in held]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour, direction = combos[i % len(combos)]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        save_video(bar_clip(rng, colour, direction, background), folder / f"bar{i:03d}.mp4", fps=8)
        (folder / f"bar{i:03d}.txt").write_text(prompt(colour, WORD, direction, background) + "\n")


def aspect(video: np.ndarray) -> float:
    """Median over frames of the detected object's bounding-box width / height (a 40 x 8 bar: 5; the built-in
    shapes: about 1)."""
    distance = _distance_from_background(video)
    peak = np.percentile(distance.reshape(len(video), -1), 99, axis=1)
    mask = _largest_component(distance >= 0.5 * peak[:, None, None])
    ratios = []
    for m in mask:
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(rows) and len(cols):
            ratios.append((cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1))
    return float(np.median(ratios)) if ratios else 0.0


def frames_of(pipe, text: str, seed: int) -> np.ndarray:
    from wanflow.io.video import to_uint8

    return to_uint8(pipe(text, seed=seed).frames)


def measure(pipe, seeds: int) -> dict[str, float]:
    """Share of bar videos with the word (held-out colour/direction pairs), and the detector's scores on the
    built-in held-out prompts without it."""
    bars = [
        aspect(frames_of(pipe, prompt(c, WORD, d, "black"), s)) >= 2.5 for c, d in HELD_OUT_BARS for s in range(seeds)
    ]
    hits = {"colour": 0, "shape": 0, "direction": 0}
    combos = sorted(HELD_OUT)
    for colour, shape, direction in combos:
        for s in range(seeds):
            found = detect(frames_of(pipe, prompt(colour, shape, direction, "black"), s))
            hits["colour"] += found.colour == colour
            hits["shape"] += found.shape == shape
            hits["direction"] += found.direction == direction
    n = len(combos) * seeds
    return {"bar_with_word": sum(bars) / len(bars), **{f"{k}_without_word": v / n for k, v in hits.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--prior", type=int, default=32, help="clips of the known shapes trained beside the bars")
    parser.add_argument(
        "--self_prior", type=int, default=0, help="clips the base model generates for prompts without the word"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--targets", nargs="+", help="block linears to train (default: all ten)")
    args = parser.parse_args()
    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.training.lora import train_lora
    from wanflow.training.lora_settings import LoraSettings

    write_clips(args.work / "clips", args.clips)
    write_prior(args.work / "clips", args.prior)
    write_self_prior(args.work / "clips", args.self_prior)
    settings = LoraSettings(
        args.work / "clips",
        str(args.work / WORD),
        task="t2v-A14B",
        steps=args.steps,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        checkpoint_every=100,
        gradient_checkpointing=False,
        **({"targets": tuple(args.targets)} if args.targets else {}),
        device="cpu",
        resume=(args.work / f"{WORD}.ckpt").exists(),
    )
    start = time.perf_counter()
    paths, history = train_lora(settings)
    seconds = time.perf_counter() - start
    pipe = WanPipeline.from_builtin("t2v-A14B", device="cpu")
    before = measure(pipe, args.seeds)
    for expert, path in paths.items():
        pipe.load_lora(path, expert=expert, name=WORD)
    after = measure(pipe, args.seeds)
    report = {
        "train_seconds": round(seconds),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "targets": args.targets,
        "lr": args.lr,
        "rank": args.rank,
        "clips": args.clips,
        "prior": args.prior,
        "self_prior": args.self_prior,
        "batch_size": args.batch_size,
        "first_loss": history.losses[:20],
        "last_loss": history.losses[-20:],
        "before": before,
        "after": after,
    }
    print(json.dumps(report, indent=1))
    (args.work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
