"""A video longer than one window: window after window through the one denoising loop.

Window k is conditioned on the last ``overlap`` latent frames of window k - 1 as they came out of the loop, never
decoded and encoded again (a round trip through pixels is where long videos drift in colour and detail). Each later
window is, for the DiT, a clip like those it was trained on: it begins with the video's latent frame 0 (the only
latent of a single pixel frame; a latent of four frames put first reads as another picture), then the overlap, then
the new frames. How a window takes the given frames is the task's own conditioning, generalised from one frame:

- a DiT that reads a mask and a conditioning latent beside the noise (I2V): frame 0 is the input image as always, the
  overlap's latents go into ``y`` after it and the mask marks them, as it marks the image;
- the others (T2V, TI2V): frame 0 and the overlap are held in the latents (``Conditioning.frame0``, 1 + K frames
  instead of TI2V's one) and their tokens see t = 0.

Each window is prepared by the task's conditioning file like a one-window video of its length (a last image enters
on the last window only), draws its noise from ``seed + k`` (modulo 2**64, the seeds' range; window 1 is the
one-window video of the same seed), and has its own prompt. The video keeps the given frames as the earlier window
made them. Each window is decoded in the context it was made in ([frame 0, overlap, new], keeping the new frames'
pixels): the causal VAE then never decodes a stretch longer than a window. With ``anchor`` the new frames of each
window are colour-graded towards window 1 (each RGB channel's mean and spread moved by that fraction to window 1's, as
a colour-match node does); it changes pixels only, never the latents the next window is conditioned on.

Video to video over windows (``Request.video``): the whole video is encoded once and each window starts from its
own stretch of those latents, laid out as the window (frame 0, the overlap, the new frames), noised to the strength.

A given video (``Request.extend``) is window 1, not made: its frames, sized to the next window's, are encoded once
and the windows after it continue from those latents as from a made window's; its pixels are kept as given.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from wanflow.io.video import kept_pixels
from wanflow.pipelines.core import Conditioning
from wanflow.pipelines.progress import Progress
from wanflow.pipelines.request import Request
from wanflow.pipelines.windows import pixel_count
from wanflow.sampling.hooks import StepHook
from wanflow.tasks import MASK_CHANNELS


@dataclass
class Window:
    """The latents (1, C, T, H, W) one window was made in, and how many of its first latent frames were given."""

    latents: torch.Tensor
    given: int  # 0 for the first window; 1 + overlap after it
    pixels: torch.Tensor | None = None  # (3, F, H, W): a given video's frames (``Request.extend``), kept as they are

    def new(self) -> torch.Tensor:
        return self.latents[:, :, self.given :]


def sample_windows(
    pipe,
    request: Request,
    progress: Progress,
    hooks: Iterable[StepHook],
    latents: torch.Tensor | None,
    timings: dict[str, float],
) -> list[Window]:
    """The windows of the video, each made from the one before; ``timings`` gets the seconds spent encoding (text and
    conditioning) and denoising."""
    if latents is not None:
        raise ValueError("latents= is the noise of one window; a longer video draws each window's noise from its seed")
    plan, hooks = request.windows, list(hooks)
    spans, texts, windows, source = plan.spans(), {}, [], None
    timings.update(encode=0.0, denoise=0.0)
    for k, (start, end) in enumerate(spans):
        if k == 0 and request.extend is not None:
            continue  # a given video: encoded at the size the next window is prepared at
        t0 = time.perf_counter()
        given = 0 if k == 0 else 1 + plan.overlap
        part = window_request(request, k, given + end - start, last=k == len(spans) - 1)
        prepared = pipe.task.prepare(pipe, part, _text(pipe, part, progress, texts))
        if k == 1 and request.extend is not None:
            windows.append(given_window(pipe, request.extend, prepared.shape))
        if k:
            known = torch.cat([windows[0].latents[:, :, :1], windows[-1].latents[:, :, -plan.overlap :]], dim=2)
            continue_from(prepared.cond, known, pipe.task.image_channels)
        if request.video is not None and source is None:  # video to video: the whole video's latents, once
            source = pipe.encode_video(request.video, prepared.shape)
        start_latents = None if source is None else window_latents(source, start, end, given)
        timings["encode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        noise = pipe.noise(prepared.shape, part.seed, part.noise_device)
        out = pipe.sample(noise, prepared.cond, part, hooks, start_latents)
        timings["denoise"] += time.perf_counter() - t0
        if k:  # the given frames as the earlier windows made them (I2V's DiT made its own of them)
            out = torch.cat([known.to(out.dtype), out[:, :, given:]], dim=2)
        windows.append(Window(out, given))
    return windows


def window_latents(source: torch.Tensor, start: int, end: int, given: int) -> torch.Tensor:
    """Video to video: the latents of a given video that window ``[start, end)`` starts from, laid out as the window
    is: the video's frame 0 and the ``given - 1`` frames before ``start`` (held or conditioned on, as the window's
    own), then its new frames (window 1: ``start`` and ``given`` 0, so frame 0 and the frames after it)."""
    return torch.cat([source[:, :, :1], source[:, :, start - given + 1 : end]], dim=2)


def given_window(pipe, frames: list, shape: tuple[int, ...]) -> Window:
    """The video being continued as window 1: its frames at the size of the noise ``shape`` (C, T, H, W), and their
    latents."""
    pixels = pipe.video_pixels(frames, shape)
    return Window(pipe.encode_image(pixels), 0, kept_pixels(pixels[0]))  # (written out as given, level for level)


def window_request(request: Request, k: int, latent_frames: int, last: bool) -> Request:
    """Window ``k`` as a one-window request: its prompt, its length, its seed (``seed + k``: its noise, the lcm
    solver's too), the last image only on the last window."""
    return dataclasses.replace(
        request,
        prompt=request.windows.prompts[k],
        frames=pixel_count(latent_frames),
        seed=(request.seed + k) % 2**64,  # (seeds go up to 2**64 - 1)
        last_image=request.last_image if last else None,
        windows=None,
    )


def continue_from(cond: Conditioning, known: torch.Tensor, image_channels: bool) -> None:
    """Condition a window on ``known`` (1, C, 1 + K, H, W): the video's latent frame 0 and the last K latent frames of
    the window before."""
    if image_channels:  # I2V: frame 0 is the input image already; the overlap beside the noise, marked in the mask
        k = known.shape[2]
        y = cond.y.clone()
        y[:, :MASK_CHANNELS, 1:k] = 1.0
        y[:, MASK_CHANNELS:, 1:k] = known[:, :, 1:].to(y.dtype)
        cond.y = y
    else:  # T2V, TI2V: held in the latents, at t = 0
        cond.frame0 = known


def decode_windows(pipe, windows: list[Window], progress: Progress, anchor: float = 0.0) -> torch.Tensor:
    """(3, F, H, W) pixels of the whole video: each window decoded as the clip it was made as, its new frames kept
    (graded towards window 1's colours by ``anchor``)."""
    parts = []
    for window in windows:
        frames = pipe.decode(window.latents, progress) if window.pixels is None else window.pixels  # (3, F, H, W)
        if window.given:
            frames = frames[:, pixel_count(window.given) :]
            if anchor:
                frames = anchor_statistics(frames, parts[0], anchor).clamp(-1, 1)
        parts.append(frames)
    return torch.cat(parts, dim=1)


def anchor_statistics(frames: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """``frames`` moved by ``strength`` (0..1) towards the per-channel mean and standard deviation of ``reference``
    (both (3, F, H, W); statistics over frames and pixels)."""
    dims = (1, 2, 3)
    mean, std = frames.mean(dims, keepdim=True), frames.std(dims, keepdim=True)
    ref_mean, ref_std = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)
    matched = (frames - mean) / std.clamp_min(1e-6) * ref_std + ref_mean
    return frames + strength * (matched - frames)


def _text(pipe, part: Request, progress: Progress, texts: dict) -> Conditioning:
    """The prompt states of this window, encoded once per distinct prompt (a fresh ``Conditioning``: the task's
    conditioning file fills it in)."""
    if part.prompt not in texts:
        cond = pipe.encode_prompts(part, progress)
        texts[part.prompt] = dict(context=cond.context, context_null=cond.context_null, context_nag=cond.context_nag)
    return Conditioning(**texts[part.prompt])


__all__ = [
    "Window",
    "anchor_statistics",
    "continue_from",
    "decode_windows",
    "given_window",
    "sample_windows",
    "window_latents",
    "window_request",
]
