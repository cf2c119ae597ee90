"""The command line's single-file flags (``--dit``, ``--dit_low``, ``--vae``, ``--t5``, ``--tokenizer``), shared by
``generate`` and ``convert``: components given one by one, alone or completing a ``--ckpt_dir``."""

from __future__ import annotations

import argparse

FILE_FLAGS = ("dit", "dit_low", "vae", "t5")


def add_file_arguments(p: argparse.ArgumentParser) -> None:
    for name, text in (
        (
            "dit",
            "DiT file (.safetensors fp32/bf16/fp16/FP8, or .gguf; each file also as hf://ORG/NAME/PATH on the "
            "Hub); for A14B the high-noise expert",
        ),
        ("dit_low", "A14B low-noise expert file"),
        ("vae", "VAE file (wan_2.1_vae / wan2.2_vae .safetensors or .pth)"),
        ("t5", "umT5 encoder file (e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors)"),
        ("tokenizer", "umT5 tokenizer folder or Hugging Face repo id (default: beside --t5, else google/umt5-xxl)"),
    ):
        p.add_argument(f"--{name}", *([f"--{name.replace('_', '-')}"] if "_" in name else []), dest=name, help=text)


def given_files(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) for name in (*FILE_FLAGS, "tokenizer"))


def files_layout_from_args(args: argparse.Namespace, base=None):
    """The layout of the components given one by one, completing ``base`` (a checkpoint's layout) if any, with the
    DiT's model type checked against ``--task`` (when given) before any weight is read."""
    from wanflow.checkpoints.layouts import files_layout
    from wanflow.checkpoints.single_file import check_dit_task

    layout = files_layout(args.dit, args.dit_low, args.vae, args.t5, args.tokenizer, base=base)
    for name, path in layout.experts.items():
        if path.is_file() and args.task:
            check_dit_task(path, args.task, "--dit_low" if name == "low" else "--dit")
    return layout
