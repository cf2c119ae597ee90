"""The flags of how the models run (``RuntimeOptions``' fields), the same for ``generate``, ``serve`` and ``worker``."""

from __future__ import annotations

import argparse

from wanflow.cli.parsers import add_flag, nonnegative_int

RUNTIME_FLAGS = ("offload", "device", "dtype", "convert_model_dtype", "t5_cpu", "fp8", "compile", "vae_tile")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    from wanflow.pipelines.runtime_options import DTYPES
    from wanflow.runtime.offload import POLICIES

    add_flag(
        p,
        "offload",
        choices=POLICIES,
        help="placement policy: all experts resident, only the active one (model), or blocks streamed (block)",
    )
    add_flag(p, "device", help="cuda, cuda:1, cpu ... (default: cuda if available)")
    add_flag(p, "dtype", choices=sorted(DTYPES), help="every component in this dtype (default: as the reference)")
    add_flag(
        p,
        "convert_model_dtype",
        action="store_true",
        help="DiT parameters in bfloat16, as the reference's flag (a GPU's default here, so it changes nothing there; "
        "on the CPU it replaces float32)",
    )
    add_flag(p, "t5_cpu", action="store_true", help="run the text encoder on the CPU")
    add_flag(p, "fp8", action="store_true", help="DiT block weights stored in float8 e4m3 with per-channel scales")
    add_flag(p, "compile", action="store_true", help="torch.compile each DiT block (the first steps pay the compile)")
    add_flag(
        p,
        "vae_tile",
        type=nonnegative_int,
        default=0,
        help="VAE decode in exact spatial tiles of N latent pixels, for less memory (default 0: whole frames)",
    )


def runtime_keywords(args: argparse.Namespace) -> dict:
    """The runtime flags as ``WanPipeline.from_pretrained`` keywords (``RuntimeOptions`` validates them)."""
    return {name: getattr(args, name) for name in RUNTIME_FLAGS}
