"""The Wan causal 3D VAEs: Wan 2.1 (4x8x8, z 16) and Wan 2.2 (4x16x16, z 48). Pure math, no IO.

Module names equal the official checkpoint keys (``Wan2.1_VAE.pth``: 194, ``Wan2.2_VAE.pth``: 196), so official
weights load without renaming. There are no buffers: the latent statistics come from the config at call time.

Encode: (2.2) pixel patchify 2, the encoder over time chunks of 1, 4, 4, ... frames sharing one ``CausalCache``,
``conv1``, keep the mean half ``mu``, normalise ``(mu - mean) / std``. Decode: un-normalise, ``conv2``, the decoder
one latent frame at a time sharing one cache, (2.2) unpatchify, clamp to [-1, 1]. ``chunked=False`` runs the whole
sequence at once instead (same result up to rounding, more memory). Computation runs in the dtype of the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise

import torch
from torch import nn

from wanflow.configs import VAEConfig
from wanflow.models.vae_blocks import (
    AttentionBlock,
    CausalCache,
    CausalConv3d,
    CausalSequential,
    Resample,
    ResidualBlock,
    RMSNorm,
    avg_down,
    dup_up,
    holds_first_frame,
    patchify,
    unpatchify,
)


def middle(dim: int) -> nn.ModuleList:
    return nn.ModuleList([ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim)])


def head(in_dim: int, out_dim: int) -> CausalSequential:
    return CausalSequential(RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))


class DownBlock(nn.Module):
    """Wan 2.2 encoder stage: residual blocks and an optional downsample, plus a parameter-free average shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, spatial: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(num_res_blocks)]
        if spatial:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)
        self.out_dim, self.factor_t, self.factor_s = out_dim, 2 if temporal else 1, 2 if spatial else 1

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        shortcut = avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        for layer in self.downsamples:
            x = layer(x, cache)
        return x + shortcut


class UpBlock(nn.Module):
    """Wan 2.2 decoder stage: residual blocks and an optional upsample; a parameter-free duplicating shortcut only
    when the stage upsamples."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, spatial: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(num_res_blocks)]
        if spatial:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", out_dim=out_dim))
        self.upsamples = nn.ModuleList(layers)
        self.spatial, self.out_dim, self.factor_t = spatial, out_dim, 2 if temporal else 1

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        shortcut = dup_up(x, self.out_dim, self.factor_t, 2, holds_first_frame(cache)) if self.spatial else None
        for layer in self.upsamples:
            x = layer(x, cache)
        return x if shortcut is None else x + shortcut


def _flat_down_layers(cfg: VAEConfig, dims: list[int]) -> list[nn.Module]:
    """Wan 2.1 encoder: per stage ``num_res_blocks`` residual blocks, then a downsample (all but the last stage)."""
    layers: list[nn.Module] = []
    for i, (in_dim, out_dim) in enumerate(pairwise(dims)):
        layers += [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(cfg.num_res_blocks)]
        if i < len(cfg.dim_mult) - 1:
            layers.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
    return layers


def _flat_up_layers(cfg: VAEConfig, dims: list[int]) -> list[nn.Module]:
    """Wan 2.1 decoder: per stage ``num_res_blocks + 1`` residual blocks, then an upsample that halves the width."""
    temporal = cfg.temporal_downsample[::-1]
    layers: list[nn.Module] = []
    for i, (in_dim, out_dim) in enumerate(pairwise(dims)):
        in_dim = in_dim // 2 if i > 0 else in_dim  # the previous stage's upsample halved it
        layers += [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(cfg.num_res_blocks + 1)]
        if i < len(cfg.dim_mult) - 1:
            layers.append(Resample(out_dim, "upsample3d" if temporal[i] else "upsample2d", out_dim=out_dim // 2))
    return layers


class Encoder(nn.Module):
    """Pixels (patchified) -> ``2 * z_dim`` channels (mean and log-variance), 4x fewer frames (plus frame 0)."""

    def __init__(self, cfg: VAEConfig, in_dim: int) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(in_dim, dims[0], 3, padding=1)
        if cfg.version == "2.1":
            self.downsamples = nn.ModuleList(_flat_down_layers(cfg, dims))
        else:
            self.downsamples = nn.ModuleList(
                DownBlock(a, b, cfg.num_res_blocks, i < last and cfg.temporal_downsample[i], i < last)
                for i, (a, b) in enumerate(pairwise(dims))
            )
        self.middle = middle(dims[-1])
        self.head = head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return self.head(x, cache)


class Decoder(nn.Module):
    """``z_dim`` channels -> pixels (patchified); latent frame 0 gives one frame, every later one four."""

    def __init__(self, cfg: VAEConfig, out_dim: int) -> None:
        super().__init__()
        dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal, last = cfg.temporal_downsample[::-1], len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = middle(dims[0])
        if cfg.version == "2.1":
            self.upsamples = nn.ModuleList(_flat_up_layers(cfg, dims))
        else:
            self.upsamples = nn.ModuleList(
                UpBlock(a, b, cfg.num_res_blocks + 1, i < last and temporal[i], i < last)
                for i, (a, b) in enumerate(pairwise(dims))
            )
        self.head = head(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return self.tail(self.trunk(x, cache), cache)

    def trunk(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """``conv1`` and the middle block, at latent resolution: the only part that sees the whole frame (the middle
        attention attends over all positions of a frame)."""
        x = self.conv1(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        return x

    def tail(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """The upsampling stages and the head: spatially local (convolutions, per-position norms, upsampling)."""
        for layer in self.upsamples:
            x = layer(x, cache)
        return self.head(x, cache)


def run_chunked(
    module: nn.Module, chunks: Iterable[torch.Tensor], on_chunk: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Run ``module`` over consecutive time chunks that share one cache; concatenate the outputs in time."""
    cache = CausalCache()
    outs = []
    for i, chunk in enumerate(chunks):
        outs.append(module(chunk, cache))
        cache.next_chunk()
        if on_chunk is not None:
            on_chunk(i)
    return torch.cat(outs, dim=2)


def _check_config(cfg: VAEConfig) -> None:
    if len(cfg.temporal_downsample) != len(cfg.dim_mult) - 1:
        raise ValueError(
            f"temporal_downsample needs one entry per downsampling stage ({len(cfg.dim_mult) - 1}), "
            f"got {cfg.temporal_downsample}"
        )


class WanVAE(nn.Module):
    """Video ``(B, 3, T, H, W)`` in [-1, 1] <-> normalised latents ``(B, z_dim, 1 + (T-1)/4, H/s, W/s)``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        pixels = 3 * cfg.patch_size**2  # channels after patchify
        self.encoder = Encoder(cfg, pixels)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg, pixels)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def encode(self, video: torch.Tensor, chunked: bool = True) -> torch.Tensor:
        """Normalised latent means ``(mu - mean) / std`` (no sampling) of a video in [-1, 1]."""
        self._check_video(video)
        x = patchify(video.to(self.dtype), self.cfg.patch_size)
        h = run_chunked(self.encoder, self._time_chunks(x)) if chunked else self.encoder(x)
        mu = self.conv1(h)[:, : self.cfg.z_dim]
        mean, inv_std = self._latent_stats(mu)
        return (mu - mean) * inv_std

    def decode(
        self, latents: torch.Tensor, chunked: bool = True, on_frame: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """Video ``(B, 3, 1 + 4 (T'-1), H, W)`` clamped to [-1, 1] from normalised latents; ``on_frame(i)`` is
        called after latent frame ``i`` is decoded (progress)."""
        x = self.decoder_input(latents)
        out = run_chunked(self.decoder, x.split(1, dim=2), on_frame) if chunked else self.decoder(x)
        return unpatchify(out, self.cfg.patch_size).clamp(-1.0, 1.0)

    def decoder_input(self, latents: torch.Tensor) -> torch.Tensor:
        """``conv2`` of the un-normalised latents ``latents * std + mean``: what the decoder reads."""
        self._check_latents(latents)
        z = latents.to(self.dtype)
        mean, inv_std = self._latent_stats(z)
        return self.conv2(z / inv_std + mean)

    def _time_chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Frame 0 alone, then groups of ``stride_t`` frames (each gives one latent frame)."""
        step = self.cfg.stride[0]
        yield x[:, :, :1]
        for start in range(1, x.shape[2], step):
            yield x[:, :, start : start + step]

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``mean`` and ``1 / std``, shaped to broadcast over ``(B, z, T, H, W)``."""
        kw = {"dtype": like.dtype, "device": like.device}
        mean = torch.tensor(self.cfg.latents_mean, **kw).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.cfg.latents_std, **kw).view(1, -1, 1, 1, 1)
        return mean, 1.0 / std

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"video must have shape (batch, 3, frames, height, width) with values in [-1, 1]; got "
                f"{tuple(video.shape)}. Add a batch dim with video[None] and put RGB on dim 1."
            )
        if not video.is_floating_point():
            raise ValueError(
                f"video must be a float tensor in [-1, 1], got {video.dtype}; convert with "
                f"video.float() / 127.5 - 1 for uint8 frames"
            )
        (t, h, w), (st, s, _) = video.shape[2:], self.cfg.stride
        if (t - 1) % st:
            raise ValueError(
                f"frame count must be 1 + {st}k (1, {1 + st}, {1 + 2 * st}, ...); got {t}. "
                f"Use the first {1 + (t - 1) // st * st} frames or pad to {1 + -(-(t - 1) // st) * st}."
            )
        if h % s or w % s:
            raise ValueError(
                f"height and width must be multiples of {s} for this VAE; got {h}x{w}. "
                f"Resize or crop to e.g. {max(s, h // s * s)}x{max(s, w // s * s)}."
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        z = self.cfg.z_dim
        if latents.ndim != 5 or latents.shape[1] != z or latents.shape[2] < 1:
            raise ValueError(
                f"latents must have shape (batch, {z}, frames, height, width) for this VAE; got "
                f"{tuple(latents.shape)}. Add a batch dim with latents[None]."
            )
