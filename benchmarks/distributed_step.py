"""Per-step DiT time and peak memory per device on the distributed path, random weights, any shape.

    torchrun --nproc_per_node 8 benchmarks/distributed_step.py --variant t2v-A14B --frames 81 --height 720 \\
        --width 1280 --ulysses_size 8 --dit_fsdp --dtype bfloat16
    torchrun --nproc_per_node 1 benchmarks/distributed_step.py --variant t2v-A14B ...   # the 1-GPU baseline
    torchrun --nproc_per_node 2 benchmarks/distributed_step.py --ulysses_size 2   # CPU smoke (gloo), a small config

A step is one classifier-free-guided velocity (both passes). Scaling efficiency = baseline / (N x this step), with
``--baseline`` the seconds per step of the 1-process run. The model is built on the meta device, sharded, then
materialised on the device with random values, so an A14B expert never has to fit on one device unsharded.
"""

from __future__ import annotations

import argparse
import time

import torch

from wanflow.configs import DIT_CONFIGS
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.pipelines.core import Conditioning, guided_velocity
from wanflow.runtime.distributed import init_from_env, shutdown
from wanflow.runtime.precision import cast_model


def build(args, ctx) -> torch.nn.Module:
    from wanflow.runtime.fsdp import shard_dit
    from wanflow.runtime.sequence_parallel import parallelize_sequence

    base = DIT_CONFIGS[args.variant] if args.variant else DIT_CONFIGS["t2v-A14B"]
    cfg = (
        base
        if args.variant
        else base.replace(dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads, num_layers=args.layers)
    )
    with torch.device("meta"):
        model = WanDiT(cfg).eval().requires_grad_(False)
    cast_model(model, getattr(torch, args.dtype), keep_fp32=FP32_MODULES)
    cfg_size = 2 if args.cfg_parallel else 1
    mesh = ctx.mesh(cfg_size=cfg_size, ulysses_size=args.ulysses_size) if ctx.world_size > 1 else None
    wrapped = parallelize_sequence(model, mesh["ulysses"]) if args.ulysses_size > 1 else model
    if args.dit_fsdp and ctx.world_size > 1:
        wrapped = shard_dit(wrapped, ctx.flat_mesh())
    wrapped.to_empty(device=ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(0)  # the same values on every rank
    with torch.no_grad():
        for p in wrapped.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.normal_(0.0, 0.02, generator=gen)
    return wrapped, cfg, (mesh["cfg"] if args.cfg_parallel else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(DIT_CONFIGS), help="real-size config (default: a small one)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--ulysses_size", type=int, default=1)
    p.add_argument("--cfg_parallel", action="store_true")
    p.add_argument("--dit_fsdp", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--baseline", type=float, help="seconds per step of the 1-process run, for scaling efficiency")
    args = p.parse_args()
    ctx = init_from_env(seed=0)
    try:
        model, cfg, cfg_group = build(args, ctx)
        stride = 16 if cfg.out_dim == 48 else 8
        lat = ((args.frames - 1) // 4 + 1, args.height // stride, args.width // stride)
        gen = torch.Generator(device=ctx.device).manual_seed(1)
        x = torch.randn(1, cfg.in_dim, *lat, generator=gen, device=ctx.device)
        dtype = getattr(torch, args.dtype)
        ctx_states = torch.randn(2, cfg.text_len, cfg.text_dim, generator=gen, device=ctx.device).to(dtype)
        cond = Conditioning(ctx_states[:1], ctx_states[1:])
        t = torch.tensor([900], device=ctx.device)
        step = guided_velocity
        if cfg_group is not None:
            from wanflow.runtime.cfg_parallel import CfgParallel

            step = CfgParallel(cfg_group).velocity
        times = []
        with torch.inference_mode():
            for i in range(args.steps + 1):  # the first one warms up
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(model, x, t, cond, 4.0)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
        best = min(times)
        if ctx.is_rank0:
            tokens = lat[0] * lat[1] * lat[2] // 4
            print(
                f"{ctx.world_size} process(es), ulysses {args.ulysses_size}, cfg_parallel {args.cfg_parallel}, "
                f"fsdp {args.dit_fsdp}; dim {cfg.dim} x {cfg.num_layers} layers, {tokens} tokens, {args.dtype} "
                f"on {ctx.device.type}"
            )
            print(f"step: {best * 1e3:.1f} ms (best of {args.steps})")
            if args.baseline:
                print(f"scaling efficiency: {args.baseline / (ctx.world_size * best):.1%}")
        if ctx.device.type == "cuda":
            print(f"rank {ctx.rank}: peak memory {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.2f} GiB")
    finally:
        if ctx.is_distributed:
            shutdown()


if __name__ == "__main__":
    main()
