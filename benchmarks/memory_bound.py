"""How far the request memory bound (``wanflow/pipelines/guards.py``) sits below what a DiT step and a VAE decode
really take: the measured peak over the bound, per case (it must stay >= 1 for the bound to be a bound).

    python benchmarks/memory_bound.py                  # CPU, float32: each case in a fresh process (peak RSS)
    python benchmarks/memory_bound.py --device cuda    # peak allocated by PyTorch (bfloat16 DiT, as on a GPU)

Random weights, one DiT block stack of 2 layers and the VAE decoder of the built-ins' widths; sizes large enough for
activations to dominate.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import torch

from wanflow.configs import VAE_CONFIGS, DiTConfig
from wanflow.pipelines.guards import memory_need

# (what, DiT dim, ffn_dim, heads, VAE, decoder width, residual blocks, width, height, frames)
CASES = [
    ("dit", 128, 384, 2, "wan2.1", 16, 1, 1024, 1024, 9),
    ("dit", 256, 1024, 4, "wan2.1", 16, 1, 1024, 1024, 9),
    ("dit", 512, 1024, 4, "wan2.1", 16, 1, 768, 768, 9),
    ("vae", 128, 384, 2, "wan2.1", 16, 1, 512, 512, 5),
    ("vae", 128, 384, 2, "wan2.1", 32, 2, 512, 512, 5),
    ("vae", 128, 384, 2, "wan2.1", 96, 2, 256, 256, 5),
    ("vae", 128, 384, 2, "wan2.2", 16, 1, 512, 512, 5),
]


def measure(case: tuple, device: torch.device) -> tuple[int, int]:
    """(peak bytes of the stage, the bound's bytes for it)."""
    from wanflow.models.dit import WanDiT
    from wanflow.models.vae import WanVAE

    what, dim, ffn, heads, vae_name, width, blocks, w, h, frames = case
    dit_cfg = DiTConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=2, text_dim=64, text_len=32)
    vae_cfg = VAE_CONFIGS[vae_name].replace(base_dim=width, decoder_dim=width, num_res_blocks=blocks)
    dtype = torch.bfloat16 if device.type == "cuda" and what == "dit" else torch.float32
    need = memory_need(dit_cfg, vae_cfg, (w, h), frames, dit_bytes=dtype.itemsize)
    st, s, _ = vae_cfg.stride
    latents = torch.randn(1, vae_cfg.z_dim, (frames - 1) // st + 1, h // s, w // s, device=device)
    with torch.inference_mode():
        if what == "dit":
            model = WanDiT(dit_cfg).to(device, dtype).eval()
            x, t = latents[:, :16].repeat(2, 1, 1, 1, 1), torch.full((2,), 500, device=device)
            context = torch.randn(2, 32, 64, device=device)
            run = lambda: model(x, t, context)  # noqa: E731
        else:
            model = WanVAE(vae_cfg).to(device).eval()
            run = lambda: model.decode(latents)  # noqa: E731
        base = _used(device)
        run()
        peak = _peak(device) - base
    return peak, need.dit_step if what == "dit" else need.vae_decode


def _used(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one case in this process (CPU)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.case is not None:
        print(*measure(CASES[args.case], device))
        return
    for i, case in enumerate(CASES):
        if device.type == "cpu":  # peak RSS only grows: a fresh process per case
            command = [sys.executable, __file__, "--case", str(i)]
            peak, bound = map(int, subprocess.run(command, capture_output=True, text=True, check=True).stdout.split())
        else:
            peak, bound = measure(case, device)
        print(f"{case[0]} {case[1:]}: peak {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB, x{peak / bound:.2f}")


if __name__ == "__main__":
    main()
