"""``wanflow train-lora DATA_DIR --task TASK --out PREFIX``: fine-tune a LoRA on a folder of captioned clips
(``training/lora.py``). Without ``--ckpt_dir`` it fine-tunes the task's built-in model."""

from __future__ import annotations

import argparse

from wanflow.cli.parsers import parse_size
from wanflow.tasks import TASKS

EXPERTS = ("high", "low", "both")  # training.lora_settings.EXPERT_CHOICES (that module imports torch)
BASES = ("auto", "float32", "bfloat16", "fp8")
OFFLOADS = ("resident", "block")  # training.lora_settings.OFFLOADS
PRIOR_TARGETS = ("flow", "base")  # training.lora_settings.PRIOR_TARGETS


def parse_swap(value: str) -> tuple[str, str]:
    trigger, sep, replacement = value.partition("=")
    if not sep or not trigger.strip() or not replacement.strip():
        raise argparse.ArgumentTypeError(f"--preserve_word looks like TRIGGER=CLASS (e.g. zorb=dog), got {value!r}")
    return trigger.strip(), replacement.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="folder of NAME.mp4 (or .png / .jpg) files, each beside NAME.txt, its caption")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="the model the LoRA is for")
    p.add_argument("--ckpt_dir", help="checkpoint folder to fine-tune (default: the task's built-in model)")
    p.add_argument(
        "--out",
        required=True,
        help="path prefix: PREFIX_high_noise.safetensors / PREFIX_low_noise.safetensors (A14B) or "
        "PREFIX.safetensors (TI2V-5B), and the resumable PREFIX.ckpt",
    )
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, help="LoRA alpha; the scale is alpha / rank (default: the rank)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate, cosine decay (default 1e-4)")
    p.add_argument("--expert", choices=EXPERTS, default="both", help="A14B: which experts to train (default both)")
    p.add_argument("--resume", action="store_true", help="continue PREFIX.ckpt where it stopped, bit for bit")
    p.add_argument("--batch_size", type=int, default=1, help="samples per step (default 1)")
    p.add_argument("--size", type=parse_size, help="training WIDTH*HEIGHT (default: the model's default size)")
    p.add_argument("--frames", type=int, help="frames per sample, 4n+1 (default: the model's default length)")
    p.add_argument("--windows", type=int, default=1, help="samples per clip, evenly spaced over it (default 1)")
    p.add_argument("--checkpoint_every", type=int, default=100, help="steps between checkpoints and LoRA files")
    p.add_argument("--sample_prompt", help="write PREFIX_step{N}.mp4 with this prompt at every checkpoint")
    p.add_argument("--base", choices=BASES, default="auto", help="frozen weights (auto: bfloat16 on a GPU)")
    p.add_argument(
        "--no_gradient_checkpointing",
        action="store_true",
        help="keep every block's activations (faster, more memory)",
    )
    p.add_argument(
        "--offload",
        choices=OFFLOADS,
        default="resident",
        help="block: keep the frozen blocks in host memory and bring each to the device only while it runs "
        "(an A14B expert on a 24 GB GPU; needs gradient checkpointing)",
    )
    add_prior_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the factors' initialisation and of the batches")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu ... (default: cuda if available)")


def add_prior_arguments(p: argparse.ArgumentParser) -> None:
    """What the LoRA must keep: prior clips (DreamBooth) or the training clips under swapped captions (DOP)."""
    p.add_argument(
        "--prior_data",
        help="second folder, same layout: clips of what the model should keep drawing (prior preservation)",
    )
    p.add_argument(
        "--prior_weight",
        type=float,
        help="with --prior_data or --preserve_word: each step adds W times the loss on as many prior clips as "
        "--batch_size (default 1)",
    )
    p.add_argument(
        "--prior_target",
        choices=PRIOR_TARGETS,
        help="with --prior_data: what the prior clips are trained towards; flow: their own flow-matching target "
        "(DreamBooth, the default); base: the frozen base model's prediction on the same noisy input (output "
        "preservation; one more forward without gradients per prior batch)",
    )
    p.add_argument(
        "--preserve_word",
        type=parse_swap,
        metavar="TRIGGER=CLASS",
        help="differential output preservation: the training clips, with TRIGGER swapped for CLASS in their captions, "
        "are trained towards the base model's prediction, so the LoRA changes what TRIGGER draws and not what CLASS "
        "draws (e.g. zorb=dog; no --prior_data needed)",
    )


def run(args: argparse.Namespace) -> int:
    from wanflow.training.lora import train_lora
    from wanflow.training.lora_settings import LoraSettings

    if args.prior_data is None and args.preserve_word is None and args.prior_weight is not None:
        raise ValueError(
            "--prior_weight weighs the clips of --prior_data (or --preserve_word): pass one, or drop the weight"
        )
    settings = LoraSettings(
        data=args.data_dir,
        out=args.out,
        task=args.task,
        ckpt_dir=args.ckpt_dir,
        steps=args.steps,
        rank=args.rank,
        alpha=args.alpha,
        lr=args.lr,
        expert=args.expert,
        batch_size=args.batch_size,
        size=args.size,
        frames=args.frames,
        windows=args.windows,
        checkpoint_every=args.checkpoint_every,
        sample_prompt=args.sample_prompt,
        base=args.base,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        offload=args.offload,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        prior_data=args.prior_data,
        prior_weight=1.0 if args.prior_weight is None else args.prior_weight,
        prior_target=args.prior_target,
        preserve_word=args.preserve_word,
    )
    paths, history = train_lora(settings)
    recent = history.losses[-10:]
    loss = f", last loss {sum(recent) / len(recent):.4g}" if recent else ""
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({len(history.losses)} steps{loss})")
    return 0
