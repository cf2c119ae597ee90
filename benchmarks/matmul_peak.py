"""The best float32 (or other dtype) matmul rate this device reaches: the practical peak to pass as
``--peak-tflops`` where the vendor's figure is unknown (a VM that hides its clock).

    python benchmarks/matmul_peak.py --threads 2
    python benchmarks/matmul_peak.py --device cuda --dtype bfloat16 --sizes 8192
"""

from __future__ import annotations

import argparse
import time

import torch


def rate(n: int, dtype: torch.dtype, device: str, repeats: int) -> float:
    """TFLOP/s of an n x n x n matmul, best of ``repeats`` after two warm-up calls."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for i in range(repeats + 2):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for n in args.sizes:
        print(f"n={n}: {rate(n, getattr(torch, args.dtype), args.device, args.repeats):.3f} TFLOP/s")


if __name__ == "__main__":
    main()
