"""Argument types the commands share: each turns one command-line value into a Python value, or says in one line
what was expected (argparse prints it as a usage error, exit code 2). No torch here: a command's arguments are
parsed before anything heavy is imported."""

from __future__ import annotations

import argparse
import re


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """``--frame_num``, also answering to ``--frame-num``."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def str2bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def parse_size(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[*xX]\s*(\d+)\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like WIDTH*HEIGHT (e.g. 1280*720), got {value!r}")
    return int(match.group(1)), int(match.group(2))


def nonnegative_int(value: str) -> int:
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def positive_int(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def parse_guide(value: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"guide scale must be a number or two numbers 'low,high', got {value!r}"
        ) from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"guide scale takes one value or two ('low,high'), got {value!r}")
    return parts
