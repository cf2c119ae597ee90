"""The LoRA and preset flags of ``wanflow generate``, and what ``wanflow info`` says about a LoRA file.

    wanflow generate ... --preset lightning --lora_high high.safetensors --lora_low low.safetensors:0.8
    wanflow generate ... --lora style.safetensors:0.7 --lora Wan2.2-Lightning-folder/ --lora_merge
    wanflow info lora.safetensors

The files are read and checked against the checkpoint's DiT configs (meta-device models: no weights) before the
weights load, so a LoRA for another model size fails in a second, not after minutes of loading.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from wanflow.checkpoints.hub import HF_PREFIX
from wanflow.cli.parsers import add_flag, str2bool
from wanflow.configs import HIGH, LOW
from wanflow.pipelines.presets import PRESETS

LORA_FLAGS = {"lora": None, "lora_high": HIGH, "lora_low": LOW}  # flag -> the expert it loads onto (None: every)


def parse_lora_arg(value: str) -> tuple[str, float | tuple[float, ...]]:
    """``PATH[:STRENGTH]`` -> (path, strength); ``PATH:S1,S2,...``: a strength for each sampler call of its experts
    (``--sampler_calls``), as a tuple. A path that exists is taken whole (it may hold a colon), and so is an
    ``hf://`` address without a strength."""
    if os.path.exists(value) or ":" not in value.removeprefix(HF_PREFIX):
        return value, 1.0
    path, _, text = value.rpartition(":")
    try:
        strengths = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: no such file, and {text!r} after the last ':' is not a number (PATH[:STRENGTH], or "
            "PATH:S1,S2,... for each sampler call)"
        ) from None
    if not all(math.isfinite(s) for s in strengths):
        raise argparse.ArgumentTypeError(f"{value!r}: the strength must be a finite number")
    return path, strengths[0] if len(strengths) == 1 else strengths


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    """``--lora/--lora_high/--lora_low PATH[:STRENGTH]`` (repeatable), ``--lora_merge`` and ``--preset``."""
    add_lora_file_arguments(p)
    add_flag(
        p,
        "lora_merge",
        action="store_true",
        help="merge the LoRAs into the weights (fastest; with --fp8 the merged weights are quantised again). "
        "Default: applied beside the weights",
    )
    add_flag(
        p,
        "preset",
        choices=sorted(PRESETS),
        help="sampling preset: lightning = 4 Euler steps on float timesteps, shift 5, no CFG (the step-distilled "
        "LoRAs); the --sample_* flags still override each value",
    )
    add_flag(
        p,
        "float_timesteps",
        type=str2bool,
        metavar="BOOL",
        help="feed the DiT 1000 * sigma unrounded, as the step-distilled LoRAs were trained (default false: the "
        "reference's truncated integers; true with --preset lightning)",
    )


def add_lora_file_arguments(p: argparse.ArgumentParser) -> None:
    """``--lora/--lora_high/--lora_low PATH[:STRENGTH]`` (repeatable): which LoRAs, on which experts."""
    common = dict(action="append", type=parse_lora_arg, metavar="PATH[:STRENGTH]")  # (STRENGTH: S or S1,S2,...)
    add_flag(
        p,
        "lora",
        help="a LoRA file (any format) on every expert, or a folder of high_noise_model/low_noise_model files each "
        "on its expert, either also as hf://ORG/NAME/PATH on the Hub; STRENGTH default 1, or S1,S2,... one for each "
        "of --sampler_calls' calls its experts run; repeatable",
        **common,
    )
    add_flag(p, "lora_high", help="a LoRA on the high-noise expert only (A14B); repeatable", **common)
    add_flag(p, "lora_low", help="a LoRA on the low-noise expert only (A14B); repeatable", **common)


def cli_loras(args: argparse.Namespace, layout) -> list[tuple[str, float, dict]]:
    """The LoRA flags as (path, strength, {expert: file}), read and checked against the checkpoint's DiT configs."""
    import torch

    from wanflow.checkpoints.load import expert_configs
    from wanflow.models.dit import WanDiT
    from wanflow.pipelines.lora import check_on, read_for

    wanted = [(p, s, e) for flag, e in LORA_FLAGS.items() for p, s in (getattr(args, flag, None) or [])]
    if not wanted:
        return []
    if layout is None:
        raise ValueError("LoRAs need the checkpoint on disk first")  # (callers pass the layout after downloading)
    with torch.device("meta"):
        models = {name: WanDiT(cfg) for name, cfg in expert_configs(layout).items()}
    out = []
    for path, strength, expert in wanted:
        targets = read_for(path, expert, list(models))
        check_on(models, targets)
        out.append((path, strength, targets))
    return out


def load_cli_loras(pipe, loras: list[tuple[str, float | tuple, dict]], merge: bool) -> dict[str, tuple[float, ...]]:
    """Load what ``cli_loras`` read onto the pipeline (a one-shot run keeps no originals of merged weights); returns
    the per-call strengths given (``PATH:S1,S2``) by the names the LoRAs were loaded under (``call_loras``)."""
    from wanflow.pipelines.lora import load_lora

    per_call = {}
    for path, strength, targets in loras:
        first = strength[0] if isinstance(strength, tuple) else strength
        name = load_lora(pipe, path, first, merge=merge, keep_originals=False, targets=targets)
        if isinstance(strength, tuple):
            per_call[name] = strength
    return per_call


def check_call_strengths(args: argparse.Namespace, request) -> None:
    """Per-call strengths (``PATH:S1,S2``) against the resolved request's calls, before any loading: one for each
    call of the flag's experts, beside the weights."""
    from wanflow.pipelines.calls import check_strengths

    for flag, expert in LORA_FLAGS.items():
        for path, strength in getattr(args, flag, None) or []:
            if isinstance(strength, tuple):
                if getattr(args, "lora_merge", False):
                    raise ValueError(f"--{flag} {path}: a strength for each sampler call needs the LoRAs beside the "
                                     "weights, not --lora_merge")  # fmt: skip
                check_strengths(request, expert, strength, f"--{flag} {path}")


def is_lora(path: str) -> bool:
    """A ``.safetensors`` file, or a folder of per-expert LoRA files (not a checkpoint folder)."""
    from wanflow.checkpoints.lora import EXPERT_FILES

    p = Path(path)
    return (p.is_file() and p.suffix == ".safetensors") or any((p / f).is_file() for f in EXPERT_FILES.values())


def describe_lora(path: str) -> str:
    """What ``wanflow info`` prints about a LoRA: format, ranks, experts, modules touched, keys skipped."""
    from wanflow.checkpoints.lora import lora_width, read_lora

    lines = []
    for expert, lora in read_lora(path).items():
        where = f"{expert}-noise expert" if expert else _expert_hint(Path(lora.source).name)
        ranks = ", ".join(map(str, lora.ranks)) or "none (full deltas only)"
        blocks = sorted({int(m.split(".")[1]) for m in lora.modules if m.startswith("blocks.")})
        span = f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "no blocks"
        kinds = sorted({re.sub(r"^blocks\.\d+\.|\.(weight|bias)$", "", name) for name in lora.deltas})
        lines += [
            f"{lora.source}: LoRA, {lora.format}",
            f"  rank {ranks}; made for a DiT {_model_for(lora_width(lora))}; {where}",
            f"  {len(lora.deltas)} parameters in {len(lora.modules)} modules ({span}): {', '.join(kinds)}",
            f"  keys skipped (Wan 2.1 image branch): {len(lora.skipped)}",
        ]
    return "\n".join(lines)


def _model_for(width: int | None) -> str:
    """``5120 wide (t2v-A14B, i2v-A14B)``: which published models have this width."""
    from wanflow.configs import DIT_CONFIGS

    if width is None:
        return "of unknown width (no self-attention factors)"
    names = [name for name, cfg in DIT_CONFIGS.items() if cfg.dim == width]
    return f"{width} wide ({', '.join(names) or 'not a published Wan 2.2 size'})"


def _expert_hint(filename: str) -> str:
    lowered = filename.lower()
    for expert, words in ((HIGH, ("high_noise", "high-noise", "_high", "-high")), (LOW, ("low_noise", "_low", "-low"))):
        if any(w in lowered for w in words):
            return f"any expert (the file name says {expert} noise: --lora_{expert})"
    return "any expert (--lora for every expert, --lora_high / --lora_low for one)"
