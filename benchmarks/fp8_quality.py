"""FP8 weights (e4m3, per-output-channel scales) against bfloat16 weights: PSNR of the decoded frames, weight bytes.

    python -m benchmarks.fp8_quality                       # tiny random checkpoint on the CPU, a few seconds
    python -m benchmarks.fp8_quality --ckpt_dir Wan2.2-T2V-A14B --size 832*480 --frames 81 --steps 40   # a GPU
    python -m benchmarks.fp8_quality --variant t2v-A14B    # bytes of one real-size expert (meta device, no weights)

Both runs start from the same noise and compute in bfloat16; only the storage of the block linears differs.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from wanflow.cli.generate import parse_size
from wanflow.configs import DIT_CONFIGS
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.fp8 import parameter_bytes, quantize_fp8
from wanflow.runtime.precision import cast_model


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Of frames in [-1, 1] (peak-to-peak 2)."""
    return (10 * torch.log10(4 / (a - b).pow(2).mean())).item()


def expert_bytes(variant: str) -> tuple[int, int]:
    """Parameter bytes of one expert in bfloat16 (float32 islands kept) and with fp8 block linears."""
    with torch.device("meta"):
        model = WanDiT(DIT_CONFIGS[variant])
    cast_model(model, torch.bfloat16, keep_fp32=FP32_MODULES)
    before = parameter_bytes(model)
    return before, parameter_bytes(quantize_fp8(model))


def compare(ckpt: str, args: argparse.Namespace) -> None:
    videos, sizes = {}, {}
    for fp8 in (False, True):
        pipe = WanPipeline.from_pretrained(ckpt, dtype=torch.bfloat16, offload=args.offload, fp8=fp8)
        sizes[fp8] = sum(parameter_bytes(m) for m in pipe.experts.values())
        kw = dict(size=args.size, frames=args.frames, steps=args.steps, seed=args.seed)
        videos[fp8] = pipe(args.prompt, **kw)
        del pipe
    bf16, fp8 = videos[False], videos[True]
    print(f"expert weights: bf16 {sizes[False]:,} B, fp8 {sizes[True]:,} B ({sizes[True] / sizes[False]:.3f}x)")
    print(
        f"frames fp8 vs bf16: PSNR {psnr(fp8.frames, bf16.frames):.2f} dB, "
        f"max |diff| {(fp8.frames - bf16.frames).abs().max().item():.4f} (range [-1, 1])"
    )
    for name, video in (("bf16", bf16), ("fp8", fp8)):
        peak = "" if video.peak_memory is None else f", peak {video.peak_memory / 2**30:.2f} GiB"
        print(f"{name}: denoise {video.timings['denoise']:.2f} s{peak}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", help="a checkpoint folder (default: a tiny random one, written to a temp folder)")
    p.add_argument("--variant", choices=sorted(DIT_CONFIGS), help="only count the bytes of this real-size expert")
    p.add_argument("--size", type=parse_size, default=(64, 64))
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offload", choices=["resident", "model", "block"])
    p.add_argument("--prompt", default="a red ball bouncing on a wooden floor")
    args = p.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # tiny tensors on a shared CPU
    if args.variant:
        before, after = expert_bytes(args.variant)
        print(f"{args.variant} expert: bf16 {before:,} B, fp8 {after:,} B ({after / before:.3f}x)")
        return
    if args.ckpt_dir:
        compare(args.ckpt_dir, args)
        return
    from tests.tiny.checkpoint import write_official_checkpoint  # (python -m from the repository root)

    with tempfile.TemporaryDirectory() as tmp:
        compare(str(write_official_checkpoint(tmp, "t2v-A14B")), args)


if __name__ == "__main__":
    main()
