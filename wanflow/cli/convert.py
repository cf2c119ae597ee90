"""``wanflow convert``: rewrite a checkpoint folder in the other layout (official <-> diffusers)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint folder (official or diffusers layout)")
    p.add_argument("dst", help="new, empty output folder")
    p.add_argument("--to", choices=["official", "diffusers"], help="target layout (default: the other one)")


def run(args: argparse.Namespace) -> int:
    from wanflow.checkpoints.convert import convert_checkpoint

    layout = convert_checkpoint(args.src, args.dst, to=args.to)
    print(f"wrote {layout.kind} layout to {layout.root} (DiT: {', '.join(layout.experts)})")
    return 0
