"""``wanflow convert``: rewrite a checkpoint folder in the other layout (official <-> diffusers), or single files
(``--dit``, ``--vae``, ...; or a folder of them) in the official or diffusers layout, dequantised to ``--dtype``."""

from __future__ import annotations

import argparse

from wanflow.cli.single_files import add_file_arguments, files_layout_from_args, given_files

DTYPES = ("bfloat16", "float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="SRC DST", help="checkpoint folder and a new, empty output folder "
                   "(only DST with --dit / --vae / --t5 files)")  # fmt: skip
    p.add_argument("--to", choices=["official", "diffusers"], help="target layout (default: the other one)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of dequantised single files")
    p.add_argument("--task", help="the task the files are for (checked against the DiT)")
    add_file_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from wanflow.checkpoints.convert import convert_checkpoint
    from wanflow.checkpoints.layouts import detect_layout

    if len(args.paths) > 2:
        raise ValueError("convert takes SRC and DST (or only DST with single files)")
    *src, dst = args.paths
    if given_files(args):
        source = files_layout_from_args(args, detect_layout(src[0]) if src else None)
    elif src:
        source = src[0]
    else:
        raise ValueError("give SRC and DST, or the single files (--dit, --vae, --t5) and DST")
    layout = convert_checkpoint(source, dst, to=args.to, dtype=getattr(torch, args.dtype))
    print(f"wrote {layout.kind} layout to {layout.root} (DiT: {', '.join(layout.experts)})")
    return 0
