"""Per-step DiT time, wanflow vs diffusers, same weights, same dtype, same inputs, in one run.

    python benchmarks/dit_vs_diffusers.py --dim 256 --layers 4 --heads 4 --frames 9 --height 128 --width 128
    python benchmarks/dit_vs_diffusers.py --variant t2v-A14B --frames 81 --height 480 --width 832 \\
        --device cuda --dtype bfloat16                                 # real shapes, random weights (GPU)

A step is one classifier-free-guided velocity: wanflow batches the two passes into one forward; diffusers' pipeline
calls its transformer twice, which is what is timed for it (``--same-batch`` times diffusers on the batch of 2 too).
FLOPs from the model of ``benchmarks/flops.py``; the fraction of peak uses ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import time

import torch
from flops import dit_forward

from wanflow.checkpoints.maps import init_kwargs
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, dit_config_to_diffusers
from wanflow.configs import DIT_CONFIGS, DiTConfig
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.runtime.precision import cast_model


def timed(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Best seconds of each ``fn()``, calls interleaved so that load on a shared machine hits all of them alike
    (the minimum, as a shared 2-core VM jumps 10x at times)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: min(v) for name, v in times.items()}


def build(cfg: DiTConfig, dtype: torch.dtype, device: torch.device):
    torch.manual_seed(0)
    with torch.device(device):
        ours = WanDiT(cfg)
    cast_model(ours.eval().requires_grad_(False), dtype, keep_fp32=FP32_MODULES)
    from diffusers import WanTransformer3DModel

    kwargs = init_kwargs(dit_config_to_diffusers(cfg))
    with torch.device(device):
        theirs = WanTransformer3DModel(**kwargs).eval().requires_grad_(False)
    theirs.load_state_dict(DIT_KEYMAP.forward({k: v.float() for k, v in ours.state_dict().items()}))
    if dtype != torch.float32:
        theirs = theirs.to(dtype)  # fp32 islands (norms, time embedding) stay float32 via diffusers' own casts
    return ours, theirs


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The DiT and video shape, device, dtype and threads of a one-step benchmark (also ``lora_step.py``'s)."""
    p.add_argument("--variant", choices=sorted(DIT_CONFIGS), help="real-size config (default: a small one)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)


def config_of(args: argparse.Namespace) -> DiTConfig:
    """The published config of ``--variant``, or a small A14B-shaped one of ``--dim/--layers/--heads``."""
    if args.variant:
        return DIT_CONFIGS[args.variant]
    return DIT_CONFIGS["t2v-A14B"].replace(
        dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads, num_layers=args.layers
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for the dtype (H100 bf16: 989)")
    p.add_argument("--same-batch", action="store_true", help="time diffusers on the CFG batch of 2 as well")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = config_of(args)
    ours, theirs = build(cfg, dtype, device)
    lat = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    x = torch.randn(1, cfg.in_dim, *lat, device=device)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    t = torch.tensor([900, 900], device=device)
    tokens = lat[0] * lat[1] * lat[2] // 4

    xd = x.to(dtype)
    fns = {
        "ours": lambda: ours(torch.cat([x, x]), t, ctx),
        "theirs": lambda: [theirs(xd, t[:1], ctx[i : i + 1], return_dict=False) for i in range(2)],
    }
    if args.same_batch:
        fns["same"] = lambda: theirs(torch.cat([xd, xd]), t, ctx, return_dict=False)
    with torch.inference_mode():
        best = timed(fns, args.repeats, device)
    ours_s, theirs_s, same = best["ours"], best["theirs"], best.get("same")
    flops = 2 * dit_forward(cfg, tokens)  # the CFG batch
    print(
        f"config: dim {cfg.dim}, layers {cfg.num_layers}, heads {cfg.num_heads}, latent {lat}, tokens {tokens}, "
        f"{args.dtype} on {args.device}, {args.threads} threads"
    )
    print(f"wanflow   step (CFG batch of 2): {ours_s * 1e3:9.1f} ms  {flops / ours_s / 1e12:8.3f} TFLOP/s")
    print(f"diffusers step (2 calls):        {theirs_s * 1e3:9.1f} ms  {flops / theirs_s / 1e12:8.3f} TFLOP/s")
    if same is not None:
        print(f"diffusers step (batch of 2):     {same * 1e3:9.1f} ms")
    print(f"speed-up wanflow / diffusers: {theirs_s / ours_s:.2f}x   (FLOPs per step {flops / 1e9:.1f} G)")
    if args.peak_tflops:
        print(f"fraction of peak: wanflow {flops / ours_s / 1e12 / args.peak_tflops:.1%}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
