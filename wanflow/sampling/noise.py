"""Seeds and the initial noise: one seed gives one video on every device count (wan22.md §5)."""

from __future__ import annotations

import random
import sys

import torch

MAX_SEED = 2**63 - 1  # the largest seed taken (the server's schema too): a signed 64-bit integer


def draw_seed(seed: int | None, name: str = "seed") -> int:
    """The reference's rule: a negative seed (or None) draws one at random; one past ``MAX_SEED`` is refused (a
    generator and the distributed broadcast take 64-bit integers)."""
    if seed is None or seed < 0:
        return random.randint(0, sys.maxsize)
    if int(seed) > MAX_SEED:
        raise ValueError(f"{name} must be at most 2**63 - 1 ({MAX_SEED}), or negative for a random one; got {seed}")
    return int(seed)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """(1, *shape): one float32 randn of the full latent shape from a generator on ``device``, as the reference
    draws it (so a sequence-parallel run draws the same noise as one process)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device)[None]
