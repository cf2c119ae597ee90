"""Building blocks of the Wan causal 3D VAEs: causal convolutions with an explicit chunk cache, RMS norm, residual
and attention blocks, resampling, the Wan 2.2 parameter-free shortcuts and pixel patchify. Pure math, no IO.

Tensors are video-shaped ``(B, C, T, H, W)`` unless noted. Every module that looks back in time takes an optional
``CausalCache``: with a cache, its input is one time chunk of a longer sequence and the cache carries the frames it
needs from earlier chunks; without one (``cache=None``), its input is the whole sequence starting at frame 0. Both
give the same result (up to float rounding); the chunked run is the reference's, and needs less memory.

Frame 0 is special in the temporal resamplers: it is neither merged when downsampling nor doubled when upsampling,
so ``1 + 4k`` frames map to ``1 + k`` latent frames and back.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from wanflow.models.attention import attention


class CausalCache:
    """What each causal module keeps between time chunks of one encode or decode call.

    One slot per module, keyed by the module itself: a ``CausalConv3d`` keeps the last frames of its zero-padded
    input stream, a temporal downsampling ``Resample`` its last input frame. ``first_chunk`` is True while the chunk
    that holds frame 0 runs; call ``next_chunk()`` after each chunk.
    """

    def __init__(self) -> None:
        self._slots: dict[nn.Module, torch.Tensor] = {}
        self.first_chunk = True

    def get(self, module: nn.Module) -> torch.Tensor | None:
        return self._slots.get(module)

    def put(self, module: nn.Module, frames: torch.Tensor) -> None:
        self._slots[module] = frames

    def next_chunk(self) -> None:
        self.first_chunk = False

    def __len__(self) -> int:
        return len(self._slots)


def holds_first_frame(cache: CausalCache | None) -> bool:
    """Whether the current input starts at frame 0: the first chunk, or the whole sequence."""
    return cache is None or cache.first_chunk


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D ``module`` to every frame: time is folded into the batch."""
    b, c, t, h, w = x.shape
    y = module(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding in space and causal padding in time: ``2 * padding_t`` frames in front, none after.

    With a cache, the frames kept from the previous chunk replace the front padding, so chunked and whole-sequence
    runs see the same inputs.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        p_t, p_h, p_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, p_h, p_w))  # space: in the conv
        self.front = 2 * p_t  # frames of history this conv needs, in front

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.front:
            history = None if cache is None else cache.get(self)
            if history is None:
                history = x.new_zeros(*x.shape[:2], self.front, *x.shape[3:])
            x = torch.cat([history, x], dim=2)
            if cache is not None:
                cache.put(self, x[:, :, -self.front :].clone())
        return convolve(x, self)


HALF_DTYPES = (torch.bfloat16, torch.float16)


def cpu_fast_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the VAE's CPU fast paths (``convolve``, ``normalize_channels``): on the CPU, float32 or a
    16-bit float, with oneDNN enabled. ``torch.backends.mkldnn.flags(enabled=False)`` turns them off, so the parity
    tests compare the reference's own kernels."""
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return x.device.type == "cpu" and onednn and (x.dtype == torch.float32 or x.dtype in HALF_DTYPES)


@functools.cache
def onednn_takes(dtype: torch.dtype) -> bool:
    """Whether this CPU has what oneDNN needs for a 16-bit float (bfloat16: AVX-512 BW/VL/DQ or AVX-NE-CONVERT;
    float16: AVX-512 FP16 or AVX-NE-CONVERT); it refuses them elsewhere. PyTorch's own checks are private: without
    them, assume not (the float32 route works everywhere)."""
    name = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    check = getattr(torch.ops.mkldnn, name, None)
    return bool(check is not None and check())


def convolve(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` (zero padding), on the CPU through oneDNN: ATen's heuristic sends small batch-1 3D convolutions
    (every per-frame decode step) to its im2col kernel, about 10x slower; both give the same values up to rounding.
    Where oneDNN refuses a 16-bit float (ATen's fallback for it is about 100x slower still), the convolution runs in
    float32 and is rounded back: the same products (a product of 16-bit floats is exact in float32) and float32
    sums, as oneDNN's 16-bit kernels compute them."""
    if not cpu_fast_kernels(x):
        return conv._conv_forward(x, conv.weight, conv.bias)
    weight, bias, dtype = conv.weight, conv.bias, x.dtype
    upcast = dtype in HALF_DTYPES and not onednn_takes(dtype)
    if upcast:
        x, weight, bias = x.float(), weight.float(), None if bias is None else bias.float()
    y = torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return y.to(dtype) if upcast else y


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) through ``convolve``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(x, self)


class CausalSequential(nn.Sequential):
    """``nn.Sequential`` that hands the cache to the causal convolutions in it."""

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x


class RMSNorm(nn.Module):
    """``F.normalize(x, dim=1) * sqrt(C) * gamma`` over channels. ``images``: gamma for 4-D per-frame inputs."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_channels(x) * self.scale * self.gamma


def normalize_channels(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)``; without autograd on the CPU fast path as ``x / sqrt(sum(x * x))`` in float32: ATen's
    norm over a non-innermost dim is about 5x slower there than a sum (it was a fifth of a built-in VAE decode). Both
    agree up to rounding; the squares' buffer takes the result, so it needs no more memory than ``F.normalize``."""
    if not cpu_fast_kernels(x) or x.requires_grad:
        return F.normalize(x, dim=1)
    if x.dtype != torch.float32:
        return normalize_channels(x.float()).to(x.dtype)
    squares = x.square()
    norm = squares.sum(dim=1, keepdim=True).sqrt_().clamp_min_(1e-12)
    return torch.div(x, norm, out=squares)


class ResidualBlock(nn.Module):
    """norm, SiLU, conv3x3x3, norm, SiLU, conv3x3x3, plus a 1x1x1 conv shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices are the checkpoint's: 1 and 4 are SiLU, 5 was a dropout (p = 0 in every released VAE).
        self.residual = CausalSequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return self.residual(x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame, with 1x1 conv projections."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv2d(dim, 3 * dim, 1)
        self.proj = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # The permuted attention output goes first: the sum takes its memory layout, as in the reference, which
        # keeps the following convolutions bit-identical for batches > 1.
        return per_frame(self._attend, x) + x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W), N = B * T
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, 3 * c, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = (a.transpose(1, 2) for a in qkv.chunk(3, dim=-1))  # (N, H*W, 1, C) views
        out = attention(q, k, v).transpose(1, 2)  # (N, 1, H*W, C)
        return self.proj(out.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w))


class Upsample2x(nn.Module):
    """Nearest-exact x2 in space, computed in float32 as the reference does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


RESAMPLE_MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")


class Resample(nn.Module):
    """Halve or double H and W (per frame, ``resample``) and, in the 3d modes, T (``time_conv``).

    ``downsample3d``: frame 0 passes; the rest merges pairwise with a stride-2 time conv whose window reaches back one
    frame. ``upsample3d``: frame 0 passes; every later frame becomes two, from the two channel halves of a causal
    time conv. ``out_dim`` is the width after an upsample (2.1 halves it, 2.2 keeps it).
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"unknown resample mode {mode!r}; expected one of {RESAMPLE_MODES}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(Upsample2x(), Conv2d(dim, out_dim or dim, 3, padding=1))
        else:  # pad right and bottom by one, then a stride-2 conv
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, cache)
        x = per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_time(x, cache)
        return x

    def _double_time(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        first = holds_first_frame(cache)
        if first and x.shape[2] == 1:  # frame 0 alone
            return x
        y = self.time_conv(x[:, :, 1:] if first else x, cache)  # (B, 2C, t, H, W)
        b, c2, t, h, w = y.shape
        # channels [:C] give frame 2k, [C:] frame 2k + 1
        y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return torch.cat([x[:, :, :1], y], dim=2) if first else y

    def _halve_time(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        first = holds_first_frame(cache)
        stream = x if first else torch.cat([cache.get(self), x], dim=2)
        if cache is not None:
            cache.put(self, x[:, :, -1:].clone())
        if not first:
            return self.time_conv(stream)
        if x.shape[2] == 1:  # frame 0 alone
            return x
        return torch.cat([x[:, :, :1], self.time_conv(stream)], dim=2)


def avg_down(x: torch.Tensor, out_dim: int, factor_t: int, factor_s: int) -> torch.Tensor:
    """Wan 2.2 encoder shortcut: fold (factor_t, factor_s, factor_s) blocks into channels, then average channel
    groups down to ``out_dim``. Time is zero-padded in front to a multiple of ``factor_t``."""
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % factor_t, 0))
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).contiguous()  # (B, C, ft, fs, fs, T', H', W')
    group = c * factor_t * factor_s * factor_s // out_dim
    return x.view(b, out_dim, group, t // factor_t, h // factor_s, w // factor_s).mean(dim=2)


def dup_up(x: torch.Tensor, out_dim: int, factor_t: int, factor_s: int, first_chunk: bool) -> torch.Tensor:
    """Wan 2.2 decoder shortcut: repeat channels, then unfold them into (factor_t, factor_s, factor_s) blocks. On the
    chunk holding frame 0 the first ``factor_t - 1`` frames are dropped (frame 0 is not doubled)."""
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(out_dim * factor_t * factor_s * factor_s // c, dim=1)
    x = x.view(b, out_dim, factor_t, factor_s, factor_s, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, out_dim, t * factor_t, h * factor_s, w * factor_s)
    return x[:, :, factor_t - 1 :] if first_chunk else x


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``b c f (h q) (w r) -> b (c r q) f h w``: (B, C, T, H, W) -> (B, C*p*p, T, H/p, W/p)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of ``patchify``: (B, C*p*p, T, H, W) -> (B, C, T, H*p, W*p)."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)  # (B, C, T, H, q, W, r)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)
