"""The ``wanflow`` command line. Each command is a module with ``add_arguments(parser)`` and ``run(args)``; only the
chosen command's module is imported, so ``wanflow --help`` answers without loading torch."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import wanflow

# command -> (module, one-line help)
COMMANDS = {
    "generate": ("wanflow.cli.generate", "make a video from a prompt (and an image)"),
    "evaluate": ("wanflow.cli.evaluate", "score generated videos on held-out prompts (built-in models)"),
    "serve": ("wanflow.server.cli", "HTTP server with a job queue and a web page"),
    "worker": ("wanflow.server.worker_cli", "run the jobs of a queue shared with API servers (wanflow serve --queue)"),
    "train-builtin": ("wanflow.cli.train_builtin", "train the built-in models from scratch"),
    "calibrate-cache": ("wanflow.cli.calibrate_cache", "measure a checkpoint's step-cache curve (--cache magcache)"),
    "train-lora": ("wanflow.cli.train_lora", "fine-tune a LoRA on a folder of captioned clips"),
    "convert": ("wanflow.cli.convert", "rewrite a checkpoint folder in the other layout (official <-> diffusers)"),
    "info": ("wanflow.cli.info", "versions, devices, attention backends, checkpoints found"),
}


class Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` (only that command's module is imported)."""
    parser = Parser(prog="wanflow", description="Wan 2.2 video generation")
    parser.add_argument("--version", action="version", version=f"wanflow {wanflow.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (module, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level takes no option values
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input (a CheckpointError is a ValueError): one line, exit 2
        print(f"wanflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
