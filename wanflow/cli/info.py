"""``wanflow info``: versions, devices, attention backends, and the checkpoints (or LoRA files) given or in the Hub
cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt_dir", nargs="*", help="checkpoint folders, single files (.safetensors, .gguf) or LoRA files")


def run(args: argparse.Namespace) -> int:
    import torch

    import wanflow
    from wanflow.checkpoints.io import CheckpointError
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.checkpoints.merge import merged_record
    from wanflow.checkpoints.single_file import peek_kind
    from wanflow.cli.lora import describe_lora, is_lora
    from wanflow.models.attention import available_backends

    print(f"wanflow {wanflow.__version__}  torch {torch.__version__}  python {sys.version.split()[0]}")
    devices = [cpu_line()] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    print(f"devices: {', '.join(devices)}")
    print(f"attention backends: {', '.join(available_backends())}")
    for folder in [*(args.ckpt_dir or []), *hub_checkpoints()]:
        if Path(folder).is_file() and peek_kind(Path(folder)) not in ("lora", "unknown"):
            print(describe_file(folder))  # a DiT, VAE or umT5 file
            continue
        if is_lora(folder):
            print(describe_lora(folder))  # an unreadable LoRA is an error (exit 2), as everywhere
            continue
        if Path(folder).is_file():
            print(describe_file(folder))
            continue
        try:
            layout = detect_layout(folder)
            print(
                f"{folder}: {layout.kind} layout, DiT {', '.join(layout.experts)}, "
                f"VAE {'yes' if layout.vae else 'no'}, T5 {'yes' if layout.text_encoder else 'no'}"
            )
            for expert, loras in merged_record(layout.root).items():  # (convert --lora, save_pretrained)
                print(f"  LoRAs merged into the {expert} expert: {', '.join(loras)}")
        except CheckpointError as e:
            print(f"{folder}: {e}")
    return 0


def cpu_line() -> str:
    """``cpu`` with its vector instructions, and whether oneDNN has bfloat16 kernels for it (without them a bfloat16
    run saves memory but takes longer than float32 there: ``--dtype``)."""
    import torch

    from wanflow.models.vae_blocks import onednn_takes

    bf16 = "oneDNN bfloat16" if onednn_takes(torch.bfloat16) else "no oneDNN bfloat16: float32 is faster"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()}, {bf16})"


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


def describe_file(path: str) -> str:
    """What a single file is: component, format, storage types and size, and for a DiT its architecture and task."""
    from wanflow.checkpoints.io import CheckpointError
    from wanflow.checkpoints.single_file import dit_config_from_file, read_single_file
    from wanflow.tasks import task_for_model

    try:
        file = read_single_file(path)
    except CheckpointError as e:
        return f"{path}: {e}"
    storage = ", ".join(f"{n} {kind}" for kind, n in file.storage().items())
    line = f"{path}: {file.kind}, {file.format}, {len(file.state)} tensors ({storage}), {file.nbytes() / 2**20:.1f} MiB"
    if file.kind != "dit":
        return line
    try:
        cfg = dit_config_from_file(file)
    except CheckpointError as e:
        return f"{line}\n  {e}"
    task = task_for_model(cfg.model_type).name
    return (
        f"{line}\n  DiT for {task}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
        f"in/out channels {cfg.in_dim}/{cfg.out_dim}, ffn {cfg.ffn_dim}, text {cfg.text_dim}"
    )
