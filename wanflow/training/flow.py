"""Flow-matching training objective for the Wan DiT.

Convention: time runs from 1 (noise) to 0 (data), ``x_t = (1 - t) x0 + t eps``, the target velocity is
``v = eps - x0`` and the DiT is conditioned on ``1000 * t`` (continuous during training; the sampler feeds the
truncated integer timesteps, which lie on the same scale).

Timesteps follow the sampling schedule's shift: ``t = shift(u)`` with ``u ~ U(0, 1)``. A two-expert (A14B) model
trains each expert only on its part of the trajectory, as Wan 2.2 does: the high-noise expert on ``t >= boundary``,
the low-noise one on ``t < boundary``. Within a range the distribution is the shifted one conditioned on the range.

Image conditioning, the two styles of Wan 2.2:
- TI2V (``frame0_mask``): latent frame 0 holds the clean image latent, its tokens see ``t = 0``, and it is left out
  of the loss; the model is asked for the velocity of the other frames only.
- I2V (``y``): 4 mask channels (1 on latent frame 0) and the VAE latent of ``[first frame, zeros...]`` are
  concatenated to the noisy latents; build them with ``image_condition``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wanflow.sampling.experts import DENSE, HIGH, LOW
from wanflow.sampling.schedule import NUM_TRAIN_TIMESTEPS, S, shift_sigmas

Velocity = Callable[..., torch.Tensor]  # model(x, t, context, y=None) -> (B, C, T, H, W)


def unshift_sigmas(t: S, shift: float) -> S:
    """Inverse of ``shift_sigmas``: the ``u`` with ``shift(u) = t``."""
    return t / (shift - (shift - 1) * t)


def expert_range(boundary: float | None, expert: str = DENSE) -> tuple[float, float]:
    """The ``[lo, hi)`` range of t an expert trains on (the high-noise expert's range includes t = 1)."""
    if expert == DENSE or boundary is None:
        if expert != DENSE:
            raise ValueError(f"a dense model (boundary None) has only the {DENSE!r} expert, got {expert!r}")
        return (0.0, 1.0)
    if not 0.0 < boundary < 1.0:
        raise ValueError(f"boundary is a fraction of the trajectory in (0, 1), got {boundary!r}")
    if expert == HIGH:
        return (boundary, 1.0)
    if expert == LOW:
        return (0.0, boundary)
    raise ValueError(f"unknown expert {expert!r}; expected {HIGH!r}, {LOW!r} or {DENSE!r}")


def sample_timesteps(
    n: int,
    shift: float,
    t_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n,) float32 times in ``t_range = [lo, hi)`` distributed as ``shift(U(0, 1))`` conditioned on the range.

    ``u`` is drawn uniformly on the pre-image ``[shift^-1(lo), shift^-1(hi))``, so no sample is rejected. With
    ``hi < 1`` every sample is strictly below ``hi`` also after rounding to float32 (and ``1000 t < 1000 hi``),
    which keeps the two experts' ranges disjoint. Created on the generator's device.
    """
    lo, hi = t_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {t_range!r}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    device = generator.device if generator is not None else None
    u_lo, u_hi = unshift_sigmas(float(lo), shift), unshift_sigmas(float(hi), shift)
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    t = shift_sigmas(u_lo + (u_hi - u_lo) * u, float(shift)).float()
    return _clamp_to_range(t, lo, hi)


def _clamp_to_range(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Undo float rounding at the edges, in t's dtype: ``t >= lo`` and ``1000 t >= 1000 lo``; for ``hi < 1`` also
    ``t < hi`` and ``1000 t < 1000 hi``."""
    dtype = _NUMPY_FLOAT[t.dtype]
    scale = dtype(NUM_TRAIN_TIMESTEPS)
    first = dtype(lo)
    while float(first) < lo or float(first * scale) < lo * NUM_TRAIN_TIMESTEPS:  # a step or two at most
        first = np.nextafter(first, dtype(np.inf))
    t = t.clamp(min=float(first), max=1.0)
    if hi < 1.0:
        last = dtype(hi)
        while float(last) >= hi or float(last * scale) >= hi * NUM_TRAIN_TIMESTEPS:
            last = np.nextafter(last, dtype(-np.inf))
        t = t.clamp(max=float(last))
    return t


_NUMPY_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t eps`` with t (B,) broadcast over (B, C, T, H, W)."""
    tb = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - tb) * x0 + tb * noise


def _frame0_rows(frame0_mask: torch.Tensor | bool | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """(B,) bool: which samples are conditioned on a clean latent frame 0."""
    if frame0_mask is None:
        return None
    rows = torch.as_tensor(frame0_mask, dtype=torch.bool, device=device)
    if rows.ndim == 0:
        rows = rows.expand(batch)
    if rows.shape != (batch,):
        raise ValueError(f"frame0_mask must be a bool or a (B,) = ({batch},) bool tensor, got {tuple(rows.shape)}")
    return rows


def token_timesteps(
    t: torch.Tensor, rows: torch.Tensor, latent_shape: torch.Size, patch: tuple[int, int, int]
) -> torch.Tensor:
    """(B, L) model timesteps ``1000 t`` per token, with the tokens of latent frame 0 at 0 where ``rows`` is set."""
    pt, ph, pw = patch
    if pt != 1:
        raise ValueError(f"frame-0 conditioning needs a temporal patch of 1, got {patch}")
    f, h, w = latent_shape[2] // pt, latent_shape[3] // ph, latent_shape[4] // pw
    per_token = (NUM_TRAIN_TIMESTEPS * t.float())[:, None, None].expand(-1, f, h * w).clone()  # (B, F, H*W tokens)
    per_token[rows, 0] = 0.0
    return per_token.flatten(1)


def flow_matching_loss(
    model: Velocity,
    x0: torch.Tensor,
    context: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
    frame0_mask: torch.Tensor | bool | None = None,
    patch: tuple[int, int, int] | None = None,
    teacher: Velocity | None = None,
) -> torch.Tensor:
    """Mean squared error between ``model(x_t, 1000 t, context, y)`` and ``eps - x0``.

    x0, noise: (B, C, T, H, W) clean latents and their noise; t: (B,) in [0, 1]; context: (B, Lc, text_dim);
    y: optional I2V conditioning channels. ``frame0_mask`` (bool or (B,) bool): samples whose latent frame 0 is the
    clean conditioning latent (TI2V); frame 0 is then not noised, its tokens get t = 0 and it is left out of the
    mean. ``patch``: the DiT's patch size (default ``model.cfg.patch_size``, else (1, 2, 2)). With a ``teacher``
    the target is the teacher's velocity on the same input instead of ``eps - x0`` (output preservation: the model
    is pulled towards what the teacher predicts there, without gradients through the teacher).
    """
    if x0.shape != noise.shape or x0.ndim != 5:
        raise ValueError(f"x0 and noise must both be (B, C, T, H, W), got {tuple(x0.shape)} and {tuple(noise.shape)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x0.shape[0]},), got {tuple(t.shape)}")
    x_t = add_noise(x0, noise, t)
    rows = _frame0_rows(frame0_mask, x0.shape[0], x0.device)
    timesteps, given = NUM_TRAIN_TIMESTEPS * t.float(), None
    if rows is not None:
        given = rows.view(-1, 1, 1, 1, 1) & _frame0_index(x0)  # (B, 1, T, 1, 1): the clean conditioning frames
        x_t = torch.where(given, x0, x_t)
        patch = patch or getattr(getattr(model, "cfg", None), "patch_size", (1, 2, 2))
        timesteps = token_timesteps(t, rows, x0.shape, patch)
    if teacher is None:
        target = (noise - x0).float()
    else:
        with torch.no_grad():
            target = teacher(x_t, timesteps, context, y=y).float()
    velocity = model(x_t, timesteps, context, y=y)
    if given is None:
        return F.mse_loss(velocity.float(), target)
    weight = (~given).float()  # 0 on given frames
    squared = (velocity.float() - target).pow(2) * weight
    return squared.sum() / (weight.expand_as(squared).sum()).clamp(min=1.0)


def _frame0_index(x: torch.Tensor) -> torch.Tensor:
    """(1, 1, T, 1, 1) bool, True on latent frame 0."""
    index = torch.zeros(1, 1, x.shape[2], 1, 1, dtype=torch.bool, device=x.device)
    index[:, :, 0] = True
    return index


def maybe_drop_context(
    context: torch.Tensor, null_context: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classifier-free guidance training: each sample's context becomes ``null_context`` with probability ``p``.

    context: (B, Lc, D); null_context: (Lc', D), (1, Lc', D) or (B, Lc', D), e.g. the states of the empty or the
    negative prompt. The shorter of the two is zero-padded in length, as the DiT pads every context anyway.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p!r}")
    if null_context.ndim == 2:
        null_context = null_context[None]
    if context.ndim != 3 or null_context.ndim != 3 or null_context.shape[-1] != context.shape[-1]:
        raise ValueError(
            f"contexts must be (B, L, D) with equal D, got {tuple(context.shape)}, {tuple(null_context.shape)}"
        )
    length = max(context.shape[1], null_context.shape[1])
    context = F.pad(context, (0, 0, 0, length - context.shape[1]))
    null_context = F.pad(null_context, (0, 0, 0, length - null_context.shape[1])).to(context)
    device = generator.device if generator is not None else None
    drop = torch.rand(context.shape[0], generator=generator, device=device) < p
    return torch.where(drop.to(context.device).view(-1, 1, 1), null_context, context)


@torch.no_grad()
def image_condition(vae: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """I2V conditioning ``y`` (B, 4 + z, T', H', W'): 4 mask channels, 1 on latent frame 0 (its 4 pixel frames are
    known), then the VAE latent of ``[first frame, zeros...]`` of ``video`` (B, 3, T, H, W) in [-1, 1]."""
    given = torch.zeros_like(video)
    given[:, :, 0] = video[:, :, 0]
    latent = vae.encode(given)
    mask = torch.zeros(latent.shape[0], 4, *latent.shape[2:], dtype=latent.dtype, device=latent.device)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, latent], dim=1)
