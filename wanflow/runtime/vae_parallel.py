"""Parallel VAE decode of one clip: its spatial tiles (``vae_tiling``) spread over the ranks of a group.

Every rank runs the cheap latent-resolution trunk (``conv1`` and the middle block with its whole-frame attention)
on the whole clip, then decodes only its own tiles through the upsampling tail, each tile with its own causal cache
over time; one all-gather brings every tile to every rank. Each tile is exact (its halo covers the tail's receptive
field), so the video equals the single-process ``vae.decode`` up to float rounding, whatever the number of ranks.
The tail is nearly all of the decode's work, so a clip decodes faster with more ranks, down to the cost of the
halos: tiles narrower than the halo (13 latent pixels for the Wan VAEs) mostly recompute their neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from wanflow.models.vae import WanVAE
from wanflow.runtime.distributed import as_group
from wanflow.runtime.vae_tiling import (
    Tile,
    decode_tile,
    decode_trunk,
    frame_ticks,
    pixels,
    plan_tiles,
    tail_halo,
    video_shape,
)


def split_tile(height: int, width: int, ranks: int, halo: int) -> tuple[int, int]:
    """The tile shape ``(rows, cols)`` of a grid of about ``ranks`` tiles with the least work on the busiest rank
    (the window areas it decodes, halos included), then the least work in all."""

    def cost(shape: tuple[int, int]) -> tuple[int, int]:
        tiles = plan_tiles(height, width, shape, halo)
        loads = [0] * ranks
        for tile, rank in zip(tiles, assign_tiles(tiles, ranks), strict=True):
            loads[rank] += tile.window_area
        return max(loads), sum(loads)

    grids = [(rows, min(width, -(-ranks // rows))) for rows in range(1, min(ranks, height) + 1)]
    return min(((-(-height // rows), -(-width // cols)) for rows, cols in grids), key=cost)


def assign_tiles(tiles: list[Tile], ranks: int) -> list[int]:
    """The rank of each tile: largest windows first, each to the least loaded rank (the same on every rank)."""
    load, owner = [0] * ranks, [0] * len(tiles)
    for i in sorted(range(len(tiles)), key=lambda i: -tiles[i].window_area):
        owner[i] = min(range(ranks), key=load.__getitem__)
        load[owner[i]] += tiles[i].window_area
    return owner


def decode_parallel(
    vae: WanVAE,
    latents: torch.Tensor,
    group: dist.ProcessGroup | DeviceMesh | None = None,
    tile: int | tuple[int, int] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``vae.decode(latents)`` with the tiles of every clip spread over ``group``; the full video on every rank.

    ``tile``: latent pixels per tile (square, or ``(rows, cols)``); None or 0 splits the frame into about one tile
    per rank (``split_tile``). ``on_frame(i)`` follows this rank's share of the work (see ``frame_ticks``).
    """
    group = as_group(group)
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    halo = tail_halo(vae.decoder)
    height, width = latents.shape[3:]
    tiles = plan_tiles(height, width, tile or split_tile(height, width, p, halo), halo)
    owners = assign_tiles(tiles, p)
    trunk = decode_trunk(vae, latents)
    batch, _, frames = video_shape(vae, latents)[:3]
    spans = [pixels(vae, t) for t in tiles]
    shapes = [(batch, 3, frames, rows.stop - rows.start, cols.stop - cols.start) for rows, cols in spans]
    sizes = [math.prod(shape) for shape in shapes]
    mine = [i for i, r in enumerate(owners) if r == rank]
    most = max(sum(n for n, r in zip(sizes, owners, strict=True) if r == q) for q in range(p))
    packed = torch.zeros(most, dtype=trunk.dtype, device=trunk.device)  # this rank's tiles, one after the other
    tick, offset = frame_ticks(on_frame, latents.shape[2], len(mine) * latents.shape[2]), 0
    for i in mine:
        decode_tile(vae, trunk, tiles[i], packed[offset : offset + sizes[i]].view(shapes[i]), tick)
        offset += sizes[i]
    gathered = [torch.empty_like(packed) for _ in range(p)]
    dist.all_gather(gathered, packed, group=group)
    return _unpack(vae, latents, tiles, owners, gathered, shapes)


def _unpack(
    vae: WanVAE,
    latents: torch.Tensor,
    tiles: list[Tile],
    owners: list[int],
    gathered: list[torch.Tensor],
    shapes: list[tuple[int, ...]],
) -> torch.Tensor:
    """The video from each rank's packed tiles, in the order each rank decoded them."""
    video = torch.empty(video_shape(vae, latents), dtype=gathered[0].dtype, device=gathered[0].device)
    offsets = [0] * len(gathered)
    for tile, rank, shape in zip(tiles, owners, shapes, strict=True):
        n = math.prod(shape)
        rows, cols = pixels(vae, tile)
        video[:, :, :, rows, cols] = gathered[rank][offsets[rank] : offsets[rank] + n].view(shape)
        offsets[rank] += n
    return video
