"""Exact spatially tiled VAE decode: the same video as ``WanVAE.decode`` (up to float rounding), in less memory.

The Wan decoder is local except for its middle block, whose self-attention sees a whole latent frame. So the
decode is split at the middle: ``Decoder.trunk`` (``conv1`` and the middle block) runs on whole frames at latent
resolution, where it is cheap, then ``Decoder.tail`` (upsampling stages and head: convolutions, per-position norms,
nearest upsampling) runs on spatial tiles of the trunk output. Each tile reads its core plus a ``halo`` of latent
pixels on every side (clipped at the frame border, where the zero padding is the plain decode's own), carries its
own ``CausalCache`` through time, and keeps only its core in pixel space. With a halo as wide as the tail's
receptive field (``tail_halo``) every kept pixel sees exactly the inputs it sees in the plain decode: no blending,
no seams.

Memory: the tail's activations and causal caches exist for one tile at a time, and the frames are written straight
into the output video; only the trunk output of every latent frame (``(B, C, T', h, w)`` at latent resolution) is
held for the whole call. Work: each tile recomputes its halo, so small tiles cost more compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn

from wanflow.models.vae import Decoder, WanVAE, run_chunked
from wanflow.models.vae_blocks import AttentionBlock, CausalCache, Upsample2x, unpatchify


class Tile(NamedTuple):
    """Latent rows and columns a tile decodes (its core) and the ones it reads (core plus halo, inside the frame)."""

    rows: slice
    cols: slice
    window_rows: slice
    window_cols: slice

    @property
    def window_area(self) -> int:
        return (self.window_rows.stop - self.window_rows.start) * (self.window_cols.stop - self.window_cols.start)


def _spatial_steps(decoder: Decoder) -> Iterator[tuple[str, int]]:
    """The tail's spatial layers in forward order: ``("conv", reach)`` for a same-size k x k convolution (reach
    ``(k - 1) / 2``), ``("up", 2)`` for a nearest 2x upsample. Pointwise layers (norms, activations, 1x1 convs,
    time-only convs, the 2.2 duplicating shortcut) reach nothing and are skipped."""
    for module in (*decoder.upsamples, decoder.head):
        for layer in module.modules():
            if isinstance(layer, AttentionBlock):
                raise ValueError("the decoder tail holds an attention block; spatial tiles cannot be exact")
            if isinstance(layer, Upsample2x):
                yield "up", 2
            elif isinstance(layer, (nn.Conv2d, nn.Conv3d)):
                kh, kw = layer.kernel_size[-2:]
                if kh != kw or kh % 2 == 0 or any(s != 1 for s in layer.stride[-2:]) or layer.dilation[-1] != 1:
                    raise ValueError(f"cannot tile through {layer}: expected odd square stride-1 kernels")
                yield "conv", (kh - 1) // 2


def tail_halo(decoder: Decoder) -> int:
    """The smallest exact halo, in latent pixels: how far one output pixel of ``decoder.tail`` reaches back.

    Walking the layers backwards from the output, a conv of reach r widens the needed input by r pixels at its
    resolution; through a nearest 2x upsample (input pixel ``floor(p / 2)`` feeds output pixel p) a reach of h
    becomes ``ceil(h / 2)``. For every released Wan VAE (and the tiny test ones) this gives 13.
    """
    reach = 0
    for kind, amount in reversed(list(_spatial_steps(decoder))):
        reach = math.ceil(reach / amount) if kind == "up" else reach + amount
    return reach


def _spans(size: int, tile: int, halo: int) -> list[tuple[slice, slice]]:
    """(core, window) slices along one axis: cores of ``tile`` (the last one shorter), windows widened by ``halo``."""
    return [
        (slice(start, min(start + tile, size)), slice(max(0, start - halo), min(size, start + tile + halo)))
        for start in range(0, size, tile)
    ]


def plan_tiles(height: int, width: int, tile: int | tuple[int, int], halo: int) -> list[Tile]:
    """Row-major tiles of ``tile`` (or ``(rows, cols)``) latent pixels covering a ``height x width`` latent frame."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if th < 1 or tw < 1 or halo < 0:
        raise ValueError(f"tile sizes must be >= 1 latent pixel and the halo >= 0, got tile {tile}, halo {halo}")
    return [
        Tile(rows, cols, window_rows, window_cols)
        for rows, window_rows in _spans(height, th, halo)
        for cols, window_cols in _spans(width, tw, halo)
    ]


def decode_trunk(vae: WanVAE, latents: torch.Tensor) -> torch.Tensor:
    """``conv2`` and ``Decoder.trunk`` over every latent frame (one causal cache): ``(B, C, T', h, w)``."""
    return run_chunked(vae.decoder.trunk, vae.decoder_input(latents).split(1, dim=2))


def decode_tile(
    vae: WanVAE, trunk: torch.Tensor, tile: Tile, out: torch.Tensor, tick: Callable[[], None] | None = None
) -> None:
    """Decode one tile through ``Decoder.tail``, frame by frame with its own cache, into ``out``:
    ``(B, 3, F, rows * s, cols * s)`` pixels of the tile's core, clamped to [-1, 1]. ``tick()`` after each frame."""
    up = vae.cfg.stride[1] // vae.cfg.patch_size  # the decoder's own upscaling (2.2 then unpatchifies 2x)
    top, left = (tile.rows.start - tile.window_rows.start) * up, (tile.cols.start - tile.window_cols.start) * up
    height, width = (tile.rows.stop - tile.rows.start) * up, (tile.cols.stop - tile.cols.start) * up
    cache, t = CausalCache(), 0
    for frame in trunk[:, :, :, tile.window_rows, tile.window_cols].split(1, dim=2):
        y = vae.decoder.tail(frame, cache)[:, :, :, top : top + height, left : left + width]
        cache.next_chunk()
        y = unpatchify(y, vae.cfg.patch_size).clamp(-1.0, 1.0)
        out[:, :, t : t + y.shape[2]] = y
        t += y.shape[2]
        if tick is not None:
            tick()


def frame_ticks(on_frame: Callable[[int], None] | None, frames: int, units: int) -> Callable[[], None]:
    """A ``tick()`` for ``units`` equal pieces of work that calls ``on_frame(0), ..., on_frame(frames - 1)`` in step
    with the work done, so a progress bar sized for ``frames`` latent frames still fills evenly when tiled."""
    done = 0

    def tick() -> None:
        nonlocal done
        before, done = done * frames // units, done + 1
        for i in range(before, done * frames // units):
            on_frame(i)

    if on_frame is None:
        return lambda: None
    if units == 0:  # nothing to do here: the frames count as done
        for i in range(frames):
            on_frame(i)
    return tick


def video_shape(vae: WanVAE, latents: torch.Tensor) -> tuple[int, ...]:
    """The shape ``vae.decode(latents)`` returns."""
    b, _, t, h, w = latents.shape
    stride_t, s, _ = vae.cfg.stride
    return (b, 3, 1 + stride_t * (t - 1), h * s, w * s)


def pixels(vae: WanVAE, tile: Tile) -> tuple[slice, slice]:
    """The pixel rows and columns of the video that a tile's core covers."""
    s = vae.cfg.stride[1]
    return slice(tile.rows.start * s, tile.rows.stop * s), slice(tile.cols.start * s, tile.cols.stop * s)


def decode_tiled(
    vae: WanVAE,
    latents: torch.Tensor,
    tile: int | tuple[int, int],
    on_frame: Callable[[int], None] | None = None,
    halo: int | None = None,
) -> torch.Tensor:
    """``vae.decode(latents)`` computed tile by tile, ``tile`` latent pixels square (or ``(rows, cols)``).

    ``halo`` defaults to the exact one (``tail_halo``); a smaller one is faster and not exact. ``on_frame(i)`` is
    called ``T'`` times in order, spread evenly over the tiles' work.
    """
    trunk = decode_trunk(vae, latents)
    tiles = plan_tiles(*latents.shape[3:], tile, tail_halo(vae.decoder) if halo is None else halo)
    video = torch.empty(video_shape(vae, latents), dtype=trunk.dtype, device=trunk.device)
    tick = frame_ticks(on_frame, latents.shape[2], len(tiles) * latents.shape[2])
    for t in tiles:
        rows, cols = pixels(vae, t)
        decode_tile(vae, trunk, t, video[:, :, :, rows, cols], tick)
    return video
