"""``wanflow train-builtin``: train the built-in models from scratch (``training/builtin.py``)."""

from __future__ import annotations

import argparse

from wanflow.tasks import TASKS

BUILTINS = [task.builtin for task in TASKS.values()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="where to write the models (default: the package's builtin/ folder)")
    p.add_argument("--work", default="wanflow-train-builtin", help="checkpoints of the stages (resumable)")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=BUILTINS,
        default=BUILTINS,
        help="models to train (processes given different tasks and the same --work may run at once)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from wanflow.builtin import ROOT
    from wanflow.training.builtin import build_all

    torch.set_num_threads(max(1, torch.get_num_threads()))
    times = build_all(args.out or ROOT, args.work, tasks=tuple(args.tasks))
    print("done: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return 0
