"""Seeds and the initial noise: one seed gives one video on every device count (wan22.md §5)."""

from __future__ import annotations

import random
import sys

import torch

# the largest seed taken (the server's schema too): an unsigned 64-bit integer, torch's generators' range and ComfyUI's
# seed widgets' (whose "randomize" draws past 2**63 about half the time)
MAX_SEED = 2**64 - 1


def draw_seed(seed: int | None, name: str = "seed") -> int:
    """The reference's rule: a negative seed (or None) draws one at random; one past ``MAX_SEED`` is refused."""
    if seed is None or seed < 0:
        return random.randint(0, sys.maxsize)
    if int(seed) > MAX_SEED:
        raise ValueError(f"{name} must be at most 2**64 - 1 ({MAX_SEED}), or negative for a random one; got {seed}")
    return int(seed)


def as_int64(seed: int) -> int:
    """A seed as the signed 64-bit integer of the same bits (for an int64 tensor or a BIGINT column)."""
    return seed - 2**64 if seed > 2**63 - 1 else seed


def from_int64(value: int) -> int:
    """The seed ``as_int64`` stored."""
    return value + 2**64 if value < 0 else value


NOISE_DEVICES = ("device", "cpu")  # where the initial noise is drawn: the run's device (the reference's), or the CPU


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str, on: str | None = None) -> torch.Tensor:
    """(1, *shape): one float32 randn of the full latent shape from a generator on ``device``, as the reference
    draws it (so a sequence-parallel run draws the same noise as one process); ``on="cpu"``: from a CPU generator,
    then moved to ``device``, as ComfyUI draws it (and diffusers with a CPU generator): one seed, one noise on any
    device."""
    if on not in (None, *NOISE_DEVICES):
        raise ValueError(f"noise_device is one of {NOISE_DEVICES}, got {on!r}")
    draw = "cpu" if on == "cpu" else device
    generator = torch.Generator(device=draw).manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=draw)[None].to(device)


def next_step_noise(
    shape: tuple[int, ...], seed: int, generator_state: torch.Tensor | None, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the next fresh noise of a sampler call, the generator's state after it): one float32 randn of (1, *shape) from
    a generator on ``device`` seeded with ``seed`` (at the call's first draw, ``generator_state`` None) or set to
    ``generator_state``, as ComfyUI's noise sampler (``default_noise_sampler``) draws them for its lcm and ancestral
    samplers, one draw a step."""
    generator = torch.Generator(device=device)
    if generator_state is None:
        generator.manual_seed(seed)
    else:
        generator.set_state(generator_state)
    noise = torch.randn((1, *shape), generator=generator, dtype=torch.float32, device=device)
    return noise, generator.get_state()


def step_noise(shape: tuple[int, ...], seed: int, index: int, device: torch.device | str) -> torch.Tensor:
    """Draw ``index`` (from 0) of a sampler call's fresh noise with ``seed`` (``next_step_noise``)."""
    generator_state = None
    for _ in range(index + 1):
        noise, generator_state = next_step_noise(shape, seed, generator_state, device)
    return noise
