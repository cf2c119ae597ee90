"""Parallel VAE decode, split by batch (clip): rank r decodes clips ``tensor_split(latents, P)[r]``, one all-gather
returns the whole batch to every rank. Exact (each clip is decoded as in one process).

Why not spatial tiles: the decoder's middle attention block attends over the whole frame, so no finite halo makes
a spatial split exact; and the causal cache chains every latent frame to all earlier ones, so a temporal split is
not exact either. A batch of one clip therefore gains nothing here (rank 0 decodes it, the others wait).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from wanflow.models.vae import WanVAE
from wanflow.runtime.distributed import as_group


def decode_parallel(
    vae: WanVAE, latents: torch.Tensor, group: dist.ProcessGroup | DeviceMesh | None = None, chunked: bool = True
) -> torch.Tensor:
    """``vae.decode(latents)`` with the clips of the batch spread over ``group``; the full result on every rank."""
    group = as_group(group)
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = torch.tensor_split(latents, p, dim=0)
    t, h, w = latents.shape[2:]
    stride_t, s, _ = vae.cfg.stride
    frame_shape = (3, 1 + stride_t * (t - 1), h * s, w * s)  # what vae.decode gives per clip
    most = max(part.shape[0] for part in parts)
    mine = parts[rank]
    out = torch.zeros(most, *frame_shape, dtype=vae.dtype, device=latents.device)
    if mine.shape[0]:
        out[: mine.shape[0]] = vae.decode(mine, chunked=chunked)
    gathered = [torch.empty_like(out) for _ in range(p)]
    dist.all_gather(gathered, out, group=group)
    return torch.cat([g[: part.shape[0]] for g, part in zip(gathered, parts, strict=True)], dim=0)
