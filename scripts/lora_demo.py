"""The built-in t2v model learns a shape it has never drawn: a long horizontal bar, called a "plank" (a word its
word-level tokenizer has never seen). Renders the clips, trains a LoRA with ``train-lora``, and measures with the
evaluator's detector, on held-out prompts, how often the model draws a bar with the word and how well it still
follows prompts without it, before and after.

    python scripts/lora_demo.py --work /tmp/plank [--steps 600] [--clips 32] [--prior 32] [--self_prior 48]

The README ("Train a LoRA") gives every run's command. The protocol of its last table: the held-out prompts are cut
alternately into a choice half and a report half (``--split held_out_choice`` / ``held_out_report``); variants are
compared on the choice half with seeds 300..315, and the chosen one is reported once on the report half with seeds
400..431. Its choice: ``--clips 48 --prior 0 --self_prior 48 --steps 1500 --lr 3e-3 --batch_size 4 --hold_validation
--prior_weight 4 --prior_target base``; it was then measured once more on ``--split lora_unseen`` (prompts the base
model knows and no ``--hold_validation`` run's clips were captioned with), seeds 500..507.
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
from wanflow.evaluation.evaluate import seen_combos
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
# Validation (``--split validation``), for choosing a variant; held out of training with ``--hold_validation``:
# bar pairs that are neither held out nor (then) trained, and the built-in evaluation's validation combinations
# (``seen_combos``: seen in its training, never among the held-out ones), absent then from the prior clips.
VALIDATION_BARS = [
    ("red", "left"),
    ("yellow", "down"),
    ("green", "still"),
    ("cyan", "right"),
    ("blue", "up"),
    ("magenta", "down"),
    ("white", "left"),
    ("blue", "still"),
]
VALIDATION_COMBOS = seen_combos()
HELD_OUT_COMBOS = sorted(HELD_OUT)


def lora_unseen_combos() -> list[tuple[str, str, str]]:
    """The built-in evaluation's combinations that are neither held out nor validation, nor the prompt of any prior
    clip of a ``--hold_validation`` run (up to 96 self-generated, up to 48 rendered): prompts the base model knows and
    such a LoRA never saw."""
    from wanflow.data.shapes import SHAPES, sample_clips

    exclude = HELD_OUT | frozenset(VALIDATION_COMBOS)
    prompted = {
        (c.colour, c.shape, c.direction)
        for seed, n in ((11, 96), (7, 48))
        for c in sample_clips(seed, n, SIZE, SIZE, FRAMES, exclude)
    }
    every = {(c, s, d) for c in COLOUR_NAMES for s in SHAPES for d in TRAIN_DIRECTIONS}
    return sorted(every - exclude - prompted)


# The held-out prompts in two halves, alternately in this order: one to choose a variant on, one to report it on.
SPLITS = {
    "held_out": (HELD_OUT_BARS, HELD_OUT_COMBOS),
    "held_out_choice": (HELD_OUT_BARS[0::2], HELD_OUT_COMBOS[0::2]),
    "held_out_report": (HELD_OUT_BARS[1::2], HELD_OUT_COMBOS[1::2]),
    "validation": (VALIDATION_BARS, VALIDATION_COMBOS),
    "lora_unseen": (VALIDATION_BARS, lora_unseen_combos()),
}


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


def write_prior(folder: Path, count: int, exclude: frozenset, seed: int = 7) -> None:
    """``count`` clips of the shapes the model already draws, with their usual prompts (``exclude``d combinations
    left out): prior preservation, so that the LoRA keeps prompts without the new word as they were."""
    from wanflow.data.shapes import render, sample_clips

    folder.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(sample_clips(seed, count, SIZE, SIZE, FRAMES, exclude)):
        save_video(render(clip, FRAMES, SIZE, SIZE), folder / f"prior{i:03d}.mp4", fps=8)
        (folder / f"prior{i:03d}.txt").write_text(clip.prompt + "\n")


def write_self_prior(folder: Path, count: int, exclude: frozenset, seed: int = 11) -> None:
    """``count`` clips that the BASE model generates itself for prompts without the word (the known shapes in the
    training colours and directions, ``exclude``d combinations left out), captioned with those prompts: prior
    preservation by self-distillation, so that where the word is absent the LoRA learns to reproduce the base
    model, not the rendered shapes (which the base draws differently)."""
    from wanflow.data.shapes import sample_clips
    from wanflow.pipelines.pipeline import WanPipeline

    if not count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    pipe = WanPipeline.from_builtin("t2v-A14B", device="cpu")
    for i, clip in enumerate(sample_clips(seed, count, SIZE, SIZE, FRAMES, exclude)):
        save_video(frames_of(pipe, clip.prompt, 1000 + i), folder / f"self{i:03d}.mp4", fps=8)  # seeds != eval's
        (folder / f"self{i:03d}.txt").write_text(clip.prompt + "\n")


def write_clips(folder: Path, count: int, held: set, seed: int = 0) -> None:
    """``count`` bar clips captioned with the word, cycling over the (colour, direction) pairs not in ``held``."""
    rng = np.random.default_rng(seed)
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


def proportion(hits: int, n: int) -> dict[str, float]:
    """A share with its standard error (binomial, ``sqrt(p (1 - p) / n)``)."""
    p = hits / n
    return {"p": round(p, 4), "se": round(float(np.sqrt(p * (1 - p) / n)), 4), "n": n}


def measure(pipe, seeds: list[int], split: str = "held_out") -> dict:
    """Share of bar videos with the word (the split's colour/direction pairs), and the detector's scores on the
    split's prompts without it (held out: the built-in evaluation's held-out combinations; validation: its seen
    ones), each with its standard error; ``videos`` holds every video's outcome (1 / 0), in prompt then seed order,
    for paired comparisons (``compare``)."""
    pairs, combos = SPLITS[split]
    videos = {"bar_with_word": [], "colour_without_word": [], "shape_without_word": [], "direction_without_word": []}
    for c, d in pairs:
        for s in seeds:
            videos["bar_with_word"].append(int(aspect(frames_of(pipe, prompt(c, WORD, d, "black"), s)) >= 2.5))
    for colour, shape, direction in combos:
        for s in seeds:
            found = detect(frames_of(pipe, prompt(colour, shape, direction, "black"), s))
            videos["colour_without_word"].append(int(found.colour == colour))
            videos["shape_without_word"].append(int(found.shape == shape))
            videos["direction_without_word"].append(int(found.direction == direction))
    return {**{k: proportion(sum(v), len(v)) for k, v in videos.items()}, "videos": videos}


def compare(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """After minus before on the same prompts and seeds, with the paired standard error of the mean difference
    (``std(d) / sqrt(n)`` over the per-video differences d in {-1, 0, 1})."""
    out = {}
    for key, first in before["videos"].items():
        d = np.array(after["videos"][key], float) - np.array(first, float)
        out[key] = {"diff": round(float(d.mean()), 4), "se": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4)}
    return out


def parse_seeds(value: str) -> list[int]:
    """``100..115`` (both ends included) or one seed."""
    first, sep, last = value.partition("..")
    if not first.isdigit() or (sep and not last.isdigit()):
        raise argparse.ArgumentTypeError(f"seeds look like 100..115, got {value!r}")
    return list(range(int(first), int(last if sep else first) + 1))


def arguments() -> argparse.Namespace:
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
    parser.add_argument("--seeds", type=int, default=2, help="evaluate with seeds 0 .. N-1 (the first runs' choice)")
    parser.add_argument("--eval_seeds", type=parse_seeds, help="evaluate with these seeds instead, e.g. 100..115")
    parser.add_argument("--split", choices=sorted(SPLITS), default="held_out", help="the prompts evaluated")
    parser.add_argument(
        "--hold_validation",
        action="store_true",
        help="keep the validation split's bar pairs and combinations out of the training and prior clips",
    )
    parser.add_argument(
        "--prior_weight",
        type=float,
        help="write the prior clips into WORK/prior and train with --prior_data WORK/prior --prior_weight W "
        "(without it they join the bars in WORK/clips, as in the README's first runs)",
    )
    parser.add_argument(
        "--prior_target",
        choices=("flow", "base"),
        default="flow",
        help="with --prior_weight: train the prior clips towards their flow target or the base model's prediction",
    )
    parser.add_argument("--eval_only", action="store_true", help="evaluate the LoRA files WORK already holds")
    parser.add_argument("--skip_base", action="store_true", help="do not evaluate the base model")
    parser.add_argument("--expert", choices=("high", "low", "both"), default="both", help="the experts trained")
    parser.add_argument("--targets", nargs="+", help="block linears to train (default: all ten)")
    return parser.parse_args()


def write_data(args: argparse.Namespace) -> None:
    """The bar clips in WORK/clips, the prior clips beside them or, with a prior weight, in WORK/prior."""
    held = set(HELD_OUT_BARS) | (set(VALIDATION_BARS) if args.hold_validation else set())
    exclude = HELD_OUT | (frozenset(VALIDATION_COMBOS) if args.hold_validation else frozenset())
    write_clips(args.work / "clips", args.clips, held)
    prior = args.work / ("prior" if args.prior_weight is not None else "clips")
    write_prior(prior, args.prior, exclude)
    write_self_prior(prior, args.self_prior, exclude)


def train(args: argparse.Namespace):
    from wanflow.training.lora import train_lora
    from wanflow.training.lora_settings import LoraSettings

    settings = LoraSettings(
        args.work / "clips",
        str(args.work / WORD),
        task="t2v-A14B",
        steps=args.steps,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        expert=args.expert,
        **(
            {"prior_data": args.work / "prior", "prior_weight": args.prior_weight, "prior_target": args.prior_target}
            if args.prior_weight is not None
            else {}
        ),
        checkpoint_every=100,
        gradient_checkpointing=False,
        **({"targets": tuple(args.targets)} if args.targets else {}),
        device="cpu",
        resume=(args.work / f"{WORD}.ckpt").exists(),
    )
    return train_lora(settings)


def lora_files(work: Path) -> dict[str, Path]:
    """The LoRA files a previous run left in WORK, by expert."""
    paths = {e: work / f"{WORD}_{e}_noise.safetensors" for e in ("high", "low")}
    paths = {e: p for e, p in paths.items() if p.is_file()}
    if not paths:
        raise SystemExit(f"--eval_only: no {WORD}_high_noise / {WORD}_low_noise .safetensors in {work}")
    return paths


def main() -> None:
    args = arguments()
    from wanflow.pipelines.pipeline import WanPipeline

    report = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.eval_only:
        paths = lora_files(args.work)
    else:
        write_data(args)
        start = time.perf_counter()
        paths, history = train(args)
        report.update(train_seconds=round(time.perf_counter() - start), threads=torch.get_num_threads())
        report.update(first_loss=history.losses[:20], last_loss=history.losses[-20:])
    seeds = args.eval_seeds or list(range(args.seeds))
    pipe = WanPipeline.from_builtin("t2v-A14B", device="cpu")
    if not args.skip_base:
        report["before"] = measure(pipe, seeds, args.split)
    for expert, path in paths.items():
        pipe.load_lora(path, expert=expert, name=WORD)
    report["after"] = measure(pipe, seeds, args.split)
    if "before" in report:
        report["after_minus_before"] = compare(report["before"], report["after"])
    report["lora_files"] = {e: str(p) for e, p in paths.items()}
    print(json.dumps(report, indent=1))
    name = f"report-{args.split}-{seeds[0]}-{seeds[-1]}.json"
    (args.work / name).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
