"""Reading the conditioning image and sizing it as the reference does (wan22.md §7.2, §7.4)."""

from __future__ import annotations

import io
import math
import os
import urllib.error
import urllib.request
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


class Resizer(Protocol):
    """A resize node run before the Wan node's fit (``io.resize_nodes``): (1, 3, H, W) floats in [0, 1] in, out."""

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...


def load_image(source: str | os.PathLike | Image.Image, timeout: float = 30.0) -> Image.Image:
    """An RGB PIL image from a path, an http(s) URL or an image, turned upright by its EXIF orientation (as
    diffusers' ``load_image`` and ComfyUI read photos; the reference reads the stored pixels), with one clear error
    if it is missing or unreadable."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = os.fspath(source)
    if path.startswith(("http://", "https://")):
        return _decode(_download(path, timeout), path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise ValueError(f"image not found: {path}")
    with open(path, "rb") as f:
        return _decode(f.read(), path)


ORIENTATION = 0x0112  # the EXIF tag; its values 5 to 8 turn the picture a quarter


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """The (width, height) of an image file as ``load_image`` turns it upright, read from its header alone."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            turned = im.getexif().get(ORIENTATION) in (5, 6, 7, 8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return (height, width) if turned else (width, height)


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # (http or https only: the caller checked)
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ValueError(f"cannot fetch image {url}: {e}") from None


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read image {where}: {e}") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


def max_area_latent_size(width: int, height: int, max_area: int, stride: int, patch: int) -> tuple[int, int]:
    """I2V-A14B: latent (h, w) with the image's aspect ratio inside ``max_area`` pixels, even for the patch."""
    aspect = height / width
    lat_h = round(math.sqrt(max_area * aspect) // stride // patch * patch)
    lat_w = round(math.sqrt(max_area / aspect) // stride // patch * patch)
    return lat_h, lat_w


def best_output_size(width: int, height: int, dw: int, dh: int, area: int) -> tuple[int, int]:
    """TI2V: the (width, height) multiple of (dw, dh) within ``area`` whose aspect is closest to the image's."""
    ratio = width / height
    ow = math.sqrt(area * ratio)
    oh = area / ow
    ow1 = max(dw, int(ow // dw * dw))  # (at least one step: tiny areas would otherwise divide by zero)
    oh1 = max(dh, int(area / ow1 // dh * dh))
    oh2 = max(dh, int(oh // dh * dh))
    ow2 = max(dw, int(area / oh2 // dw * dw))

    def deviation(w: int, h: int) -> float:
        r = w / h
        return max(r / ratio, ratio / r)

    return (ow1, oh1) if deviation(ow1, oh1) < deviation(ow2, oh2) else (ow2, oh2)


def resize_center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale (Lanczos) so the image covers (width, height), then crop the centre."""
    iw, ih = image.size
    scale = max(width / iw, height / ih)
    image = image.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


IMAGE_FITS = ("area", "crop")  # the reference's (the image's aspect within the area), ComfyUI's (the exact size)


UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")  # ComfyUI's common_upscale's


def comfy_upscale(
    x: torch.Tensor, width: int, height: int, method: str = "bilinear", crop: bool = True
) -> torch.Tensor:
    """ComfyUI's ``common_upscale`` of (1, 3, H, W) floats in [0, 1]: the centre cropped to the target's aspect
    (where ``crop``), then resized by ``method``: torch's interpolation of that name, or lanczos through PIL on the
    image as uint8 (ComfyUI's, truncated from ``255 x``)."""
    if crop:
        old_w, old_h = x.shape[-1], x.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        left = top = 0
        if old_aspect > new_aspect:
            left = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            top = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        x = x.narrow(-2, top, old_h - top * 2).narrow(-1, left, old_w - left * 2)
    if method != "lanczos":
        return F.interpolate(x, size=(height, width), mode=method)
    picture = Image.fromarray(np.clip(255.0 * x[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8))
    resized = picture.resize((width, height), resample=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def comfy_fit(image: Image.Image, width: int, height: int, scale: Resizer | None = None) -> torch.Tensor:
    """(3, height, width) float32 in [-1, 1]: the image as ComfyUI's Wan image nodes fit it (WanImageToVideo,
    WanFirstLastFrameToVideo, Wan22ImageToVideoLatent: ``common_upscale(..., "bilinear", "center")`` of LoadImage's
    ``uint8 / 255``, after an ImageScale or ImageResizeKJv2 node where ``scale`` is given): the centre cropped to the
    target's aspect, resized bilinear, then ``2 x - 1`` as its VAE takes it."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    if scale is not None:
        x = scale.apply(x)
    return (comfy_upscale(x, width, height)[0] * 2) - 1
