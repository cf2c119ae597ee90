"""The ``wanflow`` command line: ``generate``, ``convert``, ``info``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from wanflow.checkpoints.io import CheckpointError


def _convert(args: argparse.Namespace) -> int:
    from wanflow.checkpoints.convert import convert_checkpoint

    layout = convert_checkpoint(args.src, args.dst, to=args.to)
    print(f"wrote {layout.kind} layout to {layout.root} (DiT: {', '.join(layout.experts)})")
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    import wanflow
    from wanflow.models.attention import available_backends

    print(f"wanflow {wanflow.__version__}  torch {torch.__version__}  python {sys.version.split()[0]}")
    devices = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    print(f"devices: {', '.join(devices)}")
    print(f"attention backends: {', '.join(available_backends())}")
    for folder in [*(args.ckpt_dir or []), *_hub_checkpoints()]:
        from wanflow.checkpoints.layouts import detect_layout

        try:
            layout = detect_layout(folder)
            print(
                f"{folder}: {layout.kind} layout, DiT {', '.join(layout.experts)}, "
                f"VAE {'yes' if layout.vae else 'no'}, T5 {'yes' if layout.text_encoder else 'no'}"
            )
        except CheckpointError as e:
            print(f"{folder}: {e}")
    return 0


class Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _hub_checkpoints() -> list[str]:
    """Wan checkpoints already in the local Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no cache folder yet, or an unreadable one
        return []
    return [
        str(rev.snapshot_path) for repo in repos if repo.repo_id.startswith("Wan-AI/Wan2.2") for rev in repo.revisions
    ]


def build_parser() -> argparse.ArgumentParser:
    from wanflow.cli import evaluate, generate

    parser = Parser(prog="wanflow", description="Wan 2.2 video generation")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    gen = sub.add_parser("generate", help="make a video from a prompt (and an image)")
    generate.add_arguments(gen)
    gen.set_defaults(func=generate.run)
    ev = sub.add_parser("evaluate", help="score generated videos on held-out prompts (built-in models)")
    evaluate.add_evaluate_arguments(ev)
    ev.set_defaults(func=evaluate.run_evaluate)
    from wanflow.server import cli as serve

    srv = sub.add_parser("serve", help="HTTP server with a job queue and a web page")
    serve.add_arguments(srv)
    srv.set_defaults(func=serve.run)
    tb = sub.add_parser("train-builtin", help="train the built-in models from scratch")
    evaluate.add_train_arguments(tb)
    tb.set_defaults(func=evaluate.run_train)
    conv = sub.add_parser("convert", help="rewrite a checkpoint folder in the other layout (official <-> diffusers)")
    conv.add_argument("src", help="checkpoint folder (official or diffusers layout)")
    conv.add_argument("dst", help="new, empty output folder")
    conv.add_argument("--to", choices=["official", "diffusers"], help="target layout (default: the other one)")
    conv.set_defaults(func=_convert)
    info = sub.add_parser("info", help="versions, devices, attention backends, checkpoints found")
    info.add_argument("ckpt_dir", nargs="*", help="checkpoint folders to inspect")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"wanflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
