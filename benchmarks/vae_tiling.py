"""Time and peak activation memory of the plain VAE decode vs the exact tiled one (``--vae_tile``), random weights.

    python benchmarks/vae_tiling.py --vae wan2.1 --width_div 12 --latent 2 48 80 --tiles 0 32 16   # CPU, minutes
    python benchmarks/vae_tiling.py --vae wan2.1 --latent 21 90 160 --tiles 0 32 --device cuda     # 720p, 81 frames

Each variant runs in a fresh process. Memory is the peak above what the process held before the decode (weights and
latents): on CUDA ``max_memory_allocated``; on CPU the peak RSS, with glibc told to return every block over 64 KiB
to the system at once (``MALLOC_MMAP_THRESHOLD_``), so the RSS follows the live tensors. The output video counts
in both. ``--width_div`` narrows every layer (same depth, same halo) to keep CPU runs short.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wanflow.configs import VAE_CONFIGS
from wanflow.models.vae import WanVAE
from wanflow.runtime.vae_tiling import decode_tiled, tail_halo


def build(args) -> WanVAE:
    cfg = VAE_CONFIGS[args.vae]
    cfg = cfg.replace(base_dim=cfg.base_dim // args.width_div, decoder_dim=cfg.decoder_dim // args.width_div)
    with torch.device("meta"):
        vae = WanVAE(cfg).eval().requires_grad_(False)
    vae.to_empty(device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    for name, p in vae.named_parameters():
        if name.endswith("gamma"):
            p.data.fill_(1.0)
        elif name.endswith("bias"):
            p.data.zero_()
        else:
            p.data.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
    return vae


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(args) -> None:
    """Run one variant; print its JSON line; keep the plain decode's output for the others to compare with."""
    torch.set_num_threads(args.threads)
    vae = build(args)
    latents = torch.randn(1, vae.cfg.z_dim, *args.latent, generator=torch.Generator().manual_seed(1)).to(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        video = vae.decode(latents) if args.one == 0 else decode_tiled(vae, latents, args.one)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reference = Path(args.scratch) / "plain.pt"
    if args.one == 0:
        torch.save(video.cpu(), reference)
    diff = (video.cpu() - torch.load(reference)).abs().max().item() if reference.exists() else None
    row = {"tile": args.one, "seconds": round(seconds, 2), "peak_MiB": round((peak - base) / 2**20, 1), "diff": diff}
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", choices=sorted(VAE_CONFIGS), default="wan2.1")
    p.add_argument("--width_div", type=int, default=1, help="divide every layer width by this (1: the real VAE)")
    p.add_argument("--latent", type=int, nargs=3, default=(2, 48, 80), metavar=("T", "H", "W"))
    p.add_argument("--tiles", type=int, nargs="+", default=[0, 32, 16], help="tile sizes; 0 = the plain decode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        return one(args)
    video = 3 * (1 + 4 * (args.latent[0] - 1)) * args.latent[1] * args.latent[2] * VAE_CONFIGS[args.vae].stride[1] ** 2
    print(f"{args.vae} / {args.width_div}, latent {args.latent}, output video {video * 4 / 2**20:.1f} MiB float32")
    with tempfile.TemporaryDirectory() as scratch:
        for tile in sorted(args.tiles):  # the plain decode (0) first: the others compare with it
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            command = [sys.executable, __file__, *sys.argv[1:], "--one", str(tile), "--scratch", scratch]
            subprocess.run(command, env=env, check=True)
    with torch.device("meta"):
        print(f"halo: {tail_halo(WanVAE(VAE_CONFIGS[args.vae]).decoder)} latent pixels")


if __name__ == "__main__":
    main()
