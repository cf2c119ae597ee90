"""Image to video (I2V-A14B): 4 mask channels and the VAE latent of [image, grey frames...] beside the noise.

The output size keeps the image's aspect ratio within the requested area (wan22.md §7.2; ``image_fit="crop"``: the
requested size itself, the image fit as ComfyUI's WanImageToVideo fits it, ``io.image.comfy_fit``); the first latent
frame is not overwritten during sampling (the image enters only through ``y``). With a last image (first-last frame)
the clip encoded is [image, grey frames..., last image] and the mask also marks the last pixel frame, as diffusers'
``WanImageToVideoPipeline(last_image=...)`` and the reference's FLF2V build them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wanflow.io.image import comfy_fit, max_area_latent_size, to_tensor
from wanflow.pipelines.core import Conditioning, Prepared
from wanflow.pipelines.request import Request, latent_frames


def prepare(pipe, request: Request, cond: Conditioning) -> Prepared:
    image = request.require_image()
    _, s, _ = pipe.vae.cfg.stride
    width, height = request.size
    if request.image_fit == "crop":  # (ComfyUI's: the exact size)
        lat_h, lat_w = height // s, width // s
    else:
        lat_h, lat_w = max_area_latent_size(image.width, image.height, width * height, s, pipe.patch[1])
    h, w = lat_h * s, lat_w * s
    crop = request.image_fit == "crop"
    scale = request.image_scale
    fit = (lambda im: comfy_fit(im, w, h, scale)[None, :, None]) if crop else (lambda im: _pixels(im, h, w))
    last = [] if request.last_image is None else [fit(request.last_image)]  # resized to the first's size
    grey = torch.zeros(1, 3, request.frames - 1 - len(last), h, w)
    latent = pipe.encode_image(torch.cat([fit(image), grey, *last], dim=2))  # (1, 16, T', lat_h, lat_w)
    mask = torch.zeros(1, 4, latent.shape[2], lat_h, lat_w, device=latent.device)
    mask[:, :, 0] = 1.0  # the 4 pixel frames of latent frame 0 are known (frame 0 repeated 4x), the rest are not
    if last:
        mask[:, 3, -1] = 1.0  # the last latent frame holds 4 pixel frames; only its last is known
    cond.y = torch.cat([mask, latent], dim=1)
    shape = (pipe.vae.cfg.z_dim, latent_frames(request.frames), lat_h, lat_w)
    return Prepared(shape, cond)


def _pixels(image, h: int, w: int) -> torch.Tensor:
    """(1, 3, 1, h, w) in [-1, 1]: ``image`` resized (bicubic, no crop)."""
    return F.interpolate(to_tensor(image)[None], size=(h, w), mode="bicubic")[:, :, None]
