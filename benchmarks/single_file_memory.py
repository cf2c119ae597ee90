"""Resident size and step time of one DiT expert per single-file format: float, ComfyUI FP8, and GGUF quantisations
(kept quantised in memory, dequantised per layer at compute time), against the same expert in bf16.

    python benchmarks/single_file_memory.py                         # medium random DiT on the CPU (bf16 compute)
    python benchmarks/single_file_memory.py --dim 5120 --layers 40 --heads 40 --ffn 13824 --device cuda \\
        --dtype bfloat16 --frames 81 --height 480 --width 832      # an A14B expert on a GPU

Each format is written by the test fixtures' writers (``tests/tiny/single_files.py``: K types as random blocks,
which ``gguf`` cannot write), loaded with ``wanflow.checkpoints.load_file.load_dit_file``, and timed on one DiT
forward (the best of ``--repeats``). Resident = the bytes of the expert's parameters as held (stored values and
scales, not the per-layer dequantised copy, which lives only during its matmul).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test fixtures' writers

from tests.tiny.dit import random_dit_state
from tests.tiny.single_files import write_fp8, write_gguf, write_safetensors
from wanflow.checkpoints.load_file import load_dit_file
from wanflow.configs import DiTConfig
from wanflow.runtime.fp8 import parameter_bytes

FORMATS = ("bf16", "fp8-e4m3-scaled", "Q8_0", "Q6_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K")


def write(fmt: str, state: dict, cfg: DiTConfig, folder: Path) -> Path:
    if fmt == "bf16":
        return write_safetensors(state, folder / "bf16.safetensors", cfg, torch.bfloat16)
    if fmt.startswith("fp8"):
        return write_fp8(state, folder / "fp8.safetensors", cfg, "legacy")
    write_gguf(state, folder / f"{fmt}.gguf", cfg, fmt)
    return folder / f"{fmt}.gguf"


def step_seconds(model, cfg: DiTConfig, args, device) -> float:
    gen = torch.Generator().manual_seed(0)
    lat = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    x = torch.randn(2, cfg.in_dim, *lat, generator=gen).to(device)
    context = torch.randn(2, cfg.text_len, cfg.text_dim, generator=gen).to(device)
    t = torch.tensor([900, 900], device=device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, t, context)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=4096)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = DiTConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers, text_len=64)
    state = random_dit_state(cfg, 0, scale=0.02)
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            model = load_dit_file(write(fmt, state, cfg, Path(tmp)), dtype=dtype).to(device)
            size, seconds = parameter_bytes(model), step_seconds(model, cfg, args, device)
            base = base or (size, seconds)
            rows.append((fmt, size, seconds))
            del model
    print(f"DiT dim {args.dim}, {args.layers} layers, ffn {args.ffn}; CFG batch of 2 at {args.width}x{args.height}x"
          f"{args.frames}; compute {args.dtype} on {args.device}")  # fmt: skip
    print("| format | resident MiB | vs bf16 | step s | vs bf16 |")
    print("|---|---|---|---|---|")
    for fmt, size, seconds in rows:
        print(f"| {fmt} | {size / 2**20:.1f} | {size / base[0]:.2f} | {seconds:.3f} | {seconds / base[1]:.2f} |")


if __name__ == "__main__":
    main()
