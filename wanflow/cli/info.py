"""``wanflow info``: versions, devices, attention backends, and the checkpoints (or LoRA files) given or in the Hub
cache."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt_dir", nargs="*", help="checkpoint folders or LoRA files to inspect")


def run(args: argparse.Namespace) -> int:
    import torch

    import wanflow
    from wanflow.checkpoints.io import CheckpointError
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.cli.lora import describe_lora, is_lora
    from wanflow.models.attention import available_backends

    print(f"wanflow {wanflow.__version__}  torch {torch.__version__}  python {sys.version.split()[0]}")
    devices = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    print(f"devices: {', '.join(devices)}")
    print(f"attention backends: {', '.join(available_backends())}")
    for folder in [*(args.ckpt_dir or []), *hub_checkpoints()]:
        if is_lora(folder):
            print(describe_lora(folder))  # an unreadable LoRA is an error (exit 2), as everywhere
            continue
        try:
            layout = detect_layout(folder)
            print(
                f"{folder}: {layout.kind} layout, DiT {', '.join(layout.experts)}, "
                f"VAE {'yes' if layout.vae else 'no'}, T5 {'yes' if layout.text_encoder else 'no'}"
            )
        except CheckpointError as e:
            print(f"{folder}: {e}")
    return 0


def hub_checkpoints() -> list[str]:
    """Wan checkpoints already in the local Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no cache folder yet, or an unreadable one
        return []
    return [
        str(rev.snapshot_path) for repo in repos if repo.repo_id.startswith("Wan-AI/Wan2.2") for rev in repo.revisions
    ]
