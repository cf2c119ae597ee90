"""Refusing what cannot succeed, instead of a traceback minutes later or a black video: a request whose memory cannot
fit (checked before any work), and latents that are no longer finite after the first step.

The memory estimate is a LOWER BOUND, built from the tensors that must exist at the same time, so that a request it
refuses could not have run; what it lets through may still run out (the CLI then says so in one line). For a
request of F frames of W x H pixels (for an image-to-video request, W x H is the pixel area the output fills):

- tokens ``L = T' * (H / s / ph) * (W / s / pw)``: ``T' = (F - 1) / st + 1`` latent frames, the VAE stride
  ``(st, s, s)``, the DiT patch ``(pt, ph, pw)``, with pt = 1 as in every Wan DiT.
- a DiT step: ``B * L * (8 * dim + 2 * e * ffn_dim)`` bytes. In every block the float32 residual stream and the
  float32 modulated input (4 bytes x dim each) are alive while the FFN's hidden layer exists before and after its
  GELU (e bytes x ffn_dim each, e the DiT's element size); B = 2 with classifier-free guidance (both passes in one
  batch), 1 when every guidance scale is 1. Plus the weights a ``model`` offload policy still has to bring onto the
  device (the largest expert, less the experts there now, which it drops). Measured on the CPU in float32, a whole step
  peaks at 1.1-2.2x this (``benchmarks/memory_bound.py``; nearer 1.2x on long sequences).
- the VAE decode: the decoded clip, ``3 * F * H * W`` values of the VAE's dtype, held twice (the decoded chunks and
  their concatenation; once when decoding in tiles, which write into the clip), plus, at the decoder's finest stage
  (``decoder_dim * dim_mult[0]`` channels at ``(H / p, W / p)``, before the 2.2 VAE's pixel unpatchify ``p``), the
  input and output of one convolution over the ``st`` frames of one latent frame and the causal cache: the last 2
  input frames of each of its ``2 * (num_res_blocks + 1) + 1`` temporal convolutions (its residual blocks and the
  head). With ``vae_tile`` the stage runs on one tile of that many latent pixels a side at a time. Measured on the
  CPU, the decode peaks at 2.4-3.6x this (same script, 2026-12-07; 2.6-4.0x before the convolutions padded space
  themselves).
- host memory for writing the video: the float32 clip and one float32 temporary of the uint8 conversion.

On the CPU the three share the RAM (the largest counts); on a GPU the first two are compared with the device's free
memory and the last with the RAM. Not counted: the text encoder (it runs before, alone), the conditioning image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from wanflow.configs import DiTConfig, VAEConfig
from wanflow.sampling.hooks import Step, StepHook

GIB = 2**30


@dataclass(frozen=True)
class MemoryNeed:
    """The least memory one request needs, by stage, in bytes."""

    tokens: int  # DiT tokens of one sample
    dit_step: int  # on the device, during a DiT step (with the weights still to be brought there)
    vae_decode: int  # on the device, during the VAE decode
    host: int  # in host memory, while the video is converted and written
    tiled: bool = False  # the decode runs in tiles already

    def describe(self) -> str:
        return (
            f"{self.tokens} DiT tokens: a DiT step {size(self.dit_step)}, the VAE decode {size(self.vae_decode)}, "
            f"writing the video {size(self.host)}"
        )


def memory_need(
    dit: DiTConfig,
    vae: VAEConfig,
    size: tuple[int, int],
    frames: int,
    *,
    batch: int = 2,
    dit_bytes: int = 4,
    vae_bytes: int = 4,
    vae_tile: int = 0,
    pending_weights: int = 0,
    dit_frames: int | None = None,
) -> MemoryNeed:
    """The lower bound of the module docstring for ``frames`` frames of ``size`` = (width, height) pixels, of which
    the DiT denoises ``dit_frames`` at once (a window of a longer video; default all)."""
    width, height = size
    st, sh, sw = vae.stride
    _, ph, pw = dit.patch_size
    latent_frames = ((dit_frames or frames) - 1) // st + 1
    tokens = latent_frames * (height // sh // ph) * (width // sw // pw)
    dit_step = batch * tokens * (8 * dit.dim + 2 * dit_bytes * dit.ffn_dim) + pending_weights
    if vae_tile:
        height, width = min(height, vae_tile * sh), min(width, vae_tile * sw)
    finest_frames = 2 * st + 2 * (2 * (vae.num_res_blocks + 1) + 1)  # one conv's input and output, the cache
    finest = vae.decoder_dim * vae.dim_mult[0] * (height // vae.patch_size) * (width // vae.patch_size)
    clip = 3 * frames * size[0] * size[1]
    vae_decode = ((1 if vae_tile else 2) * clip + finest_frames * finest) * vae_bytes
    return MemoryNeed(tokens, dit_step, vae_decode, host=2 * clip * 4, tiled=bool(vae_tile))


def check_memory(need: MemoryNeed, device: torch.device) -> None:
    """A ValueError in one line when ``need`` cannot fit in what ``device`` (and the host) has free now."""
    host = available_memory(torch.device("cpu"))
    if device.type == "cpu":
        checks = [(max(need.dit_step, need.vae_decode, need.host), host, "RAM")]
    else:
        checks = [
            (max(need.dit_step, need.vae_decode), available_memory(device), f"{device} memory"),
            (need.host, host, "RAM"),
        ]
    for needed, free, where in checks:
        if free is not None and needed > free:
            tiles = not need.tiled and needed == need.vae_decode > need.host
            raise ValueError(
                f"this request needs at least {size(needed)} of {where} but {size(free)} is free "
                f"({need.describe()}); ask for a smaller size or fewer frames (CLI: --size, --frame_num)"
                + (", or decode in tiles (--vae_tile)" if tiles else "")
            )


def size(n: int) -> str:
    """Bytes for people: GiB with one decimal, MiB below one GiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def available_memory(device: torch.device) -> int | None:
    """Bytes free now: the GPU's free memory plus what PyTorch's allocator holds unused; for the CPU the kernel's
    MemAvailable plus free swap, within a cgroup's limit. None where it cannot be known (no check then)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    info = _meminfo()
    if "MemAvailable" not in info:
        return None
    free = info["MemAvailable"] + info.get("SwapFree", 0)
    limit = _cgroup_room()
    return free if limit is None else min(free, limit)


def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        return {}


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (``memory.max - memory.current``); None without a limit."""
    base = "/sys/fs/cgroup"
    try:
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        with open(os.path.join(base, "memory.current")) as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


class NonFiniteLatents(ValueError):
    """The latents hold NaN or Inf: the weights are broken, or the precision overflowed."""


class FiniteLatents(StepHook):
    """Stops a run whose latents are NaN or Inf after its first step, which would otherwise decode to a black video.
    One check, after step 0 only: a device sync there, none in the other steps."""

    def after(self, step: Step, latents: torch.Tensor) -> None:
        if step.index == 0 and not bool(torch.isfinite(latents).all()):
            raise NonFiniteLatents(
                f"the latents hold NaN or Inf after the first step (expert {step.expert!r}): the checkpoint's weights "
                "are broken (NaN/Inf), or the model overflows in this precision (try dtype float32)"
            )


__all__ = ["FiniteLatents", "MemoryNeed", "NonFiniteLatents", "available_memory", "check_memory", "memory_need"]
