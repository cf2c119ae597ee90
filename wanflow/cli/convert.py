"""``wanflow convert``: rewrite a checkpoint folder in the other layout (official <-> diffusers), or single files
(``--dit``, ``--vae``, ...; or a folder of them) in the official or diffusers layout, dequantised to ``--dtype``;
with ``--lora_high`` / ``--lora_low`` / ``--lora``, LoRAs merged into the experts of the new folder for good
(``checkpoints.merge``; ``--to`` the source's own layout copies it first)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from wanflow.cli.lora import add_lora_file_arguments
from wanflow.cli.single_files import add_file_arguments, files_layout_from_args, given_files

DTYPES = ("bfloat16", "float16", "float32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="SRC DST", help="checkpoint folder and a new, empty output folder "
                   "(only DST with --dit / --vae / --t5 files)")  # fmt: skip
    p.add_argument("--to", choices=["official", "diffusers"], help="target layout (default: the other one)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of dequantised single files")
    p.add_argument("--task", help="the task the files are for (checked against the DiT)")
    add_file_arguments(p)
    add_lora_file_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from wanflow.checkpoints.convert import SHARD_BYTES, convert_checkpoint
    from wanflow.checkpoints.layouts import Layout, detect_layout
    from wanflow.checkpoints.merge import merge_loras
    from wanflow.cli.lora import cli_loras

    if len(args.paths) > 2:
        raise ValueError("convert takes SRC and DST (or only DST with single files)")
    *src, dst = args.paths
    if given_files(args):
        source = files_layout_from_args(args, detect_layout(src[0]) if src else None)
    elif src:
        source = src[0]
    else:
        raise ValueError("give SRC and DST, or the single files (--dit, --vae, --t5) and DST")
    source = source if isinstance(source, Layout) else detect_layout(source)
    loras = cli_loras(args, source)  # read and checked against the experts before anything is written
    if loras and args.to == source.kind:  # the same layout: a copy to merge into
        copy_checkpoint(source, Path(dst))
        layout = detect_layout(dst)
    else:
        layout = convert_checkpoint(source, dst, to=args.to, dtype=getattr(torch, args.dtype))
    print(f"wrote {layout.kind} layout to {layout.root} (DiT: {', '.join(layout.experts)})")
    for expert, merged in merge_loras(layout, loras, SHARD_BYTES).items():
        print(f"merged into the {expert} expert: {', '.join(merged)}")
    return 0


def copy_checkpoint(layout, dst: Path) -> None:
    """A checkpoint folder copied as it is into the new folder ``dst`` (to merge LoRAs into)."""
    if layout.kind == "files":
        raise ValueError("single files are written in a layout: --to official or --to diffusers, not the same files")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"output folder {dst} is not empty; choose a new folder")
    shutil.copytree(layout.root, dst, dirs_exist_ok=True)
