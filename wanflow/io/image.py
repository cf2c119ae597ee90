"""Reading the conditioning image and sizing it as the reference does (wan22.md §7.2, §7.4)."""

from __future__ import annotations

import io
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


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


UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")  # ComfyUI's ImageScale's


@dataclass(frozen=True)
class ImageScale:
    """ComfyUI's ImageScale node on an input image before its Wan image node fits it: ``method`` (one of
    ``UPSCALE_METHODS``) to ``width`` x ``height`` (a side of 0: from the other, keeping the aspect; both 0: the image
    unchanged), its centre cropped to that aspect first where ``crop``."""

    method: str
    width: int
    height: int
    crop: bool = False

    @classmethod
    def parse(cls, text: str) -> ImageScale:
        """``METHOD:W*H[:center]``, e.g. ``lanczos:832*480:center`` or ``bicubic:0*480``."""
        method, _, rest = str(text).partition(":")
        size, _, crop = rest.partition(":")
        width, _, height = size.replace("x", "*").partition("*")
        if (
            method not in UPSCALE_METHODS
            or crop not in ("", "center", "disabled")
            or not (width.isdigit() and height.isdigit())
        ):
            raise ValueError(
                f"image_scale is METHOD:W*H[:center], METHOD one of {', '.join(UPSCALE_METHODS)} (ComfyUI's "
                f"ImageScale), a side 0 to keep the aspect; got {text!r}"
            )
        return cls(method, int(width), int(height), crop == "center")

    def __str__(self) -> str:
        return f"{self.method}:{self.width}*{self.height}" + (":center" if self.crop else "")

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the node makes of an image of ``width`` x ``height``."""
        if self.width == 0 and self.height == 0:
            return width, height
        if self.width == 0:
            return max(1, round(width * self.height / height)), self.height
        if self.height == 0:
            return self.width, max(1, round(height * self.width / width))
        return self.width, self.height

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) floats in [0, 1], scaled."""
        if self.width == 0 and self.height == 0:
            return x
        return comfy_upscale(x, *self.size(x.shape[3], x.shape[2]), self.method, self.crop)


RESIZE_MODES = ("stretch", "resize", "crop", "total_pixels")  # KJNodes' ImageResizeKJv2's keep_proportion, less padding
RESIZE_POSITIONS = ("center", "top", "bottom", "left", "right")


@dataclass(frozen=True)
class ImageResize:
    """KJNodes' ImageResizeKJv2 node (kijai/ComfyUI-KJNodes, 2025-06 to 2026-08) on an input image before its Wan
    image node: ``mode`` stretch (to ``width`` x ``height``), resize (the largest size of the image's aspect within
    them), crop (the image cropped to their aspect at ``position``, then scaled to them) or total_pixels (the image's
    aspect at ``width * height`` pixels); a side 0 keeps the image's (stretch, crop) or its aspect (resize); the sides
    then cut down to multiples of ``divisible_by``; scaled by ``method`` as ComfyUI's ``common_upscale``. Its size
    outputs are the scaled image's (``size``), which Wan workflows feed the Wan node."""

    method: str
    width: int
    height: int
    mode: str
    position: str = "center"
    divisible_by: int = 2  # (the node's default)

    @classmethod
    def parse(cls, text: str) -> ImageResize:
        """``METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY]``, e.g. ``lanczos:832*480:crop:center:16``."""
        method, size, mode, *rest = [*str(text).split(":"), "", ""][:5]
        position, by = (rest[0] or "center"), (rest[1] or "2")
        width, _, height = size.replace("x", "*").partition("*")
        if (
            method not in UPSCALE_METHODS
            or mode not in RESIZE_MODES
            or position not in RESIZE_POSITIONS
            or not (width.isdigit() and height.isdigit() and by.isdigit())
        ):
            raise ValueError(
                f"a KJNodes resize is METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY], METHOD one of "
                f"{', '.join(UPSCALE_METHODS)}, MODE one of {', '.join(RESIZE_MODES)}, POSITION one of "
                f"{', '.join(RESIZE_POSITIONS)}; got {text!r}"
            )
        return cls(method, int(width), int(height), mode, position, int(by))

    def __str__(self) -> str:
        return f"{self.method}:{self.width}*{self.height}:{self.mode}:{self.position}:{self.divisible_by}"

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the node makes of an image of ``width`` x ``height`` (its size outputs)."""
        w, h = self.width, self.height
        if self.mode == "total_pixels":
            w, h = int(math.sqrt(w * h * (width / height))), int(math.sqrt(w * h / (width / height)))
        elif self.mode == "resize" and w == 0 and h == 0:
            w, h = width, height
        elif self.mode == "resize" and w == 0:
            w = round(width * (h / height))
        elif self.mode == "resize" and h == 0:
            h = round(height * (w / width))
        elif self.mode == "resize":
            ratio = min(w / width, h / height)
            w, h = round(width * ratio), round(height * ratio)
        else:
            w, h = w or width, h or height
        if self.divisible_by > 1:
            w, h = w - w % self.divisible_by, h - h % self.divisible_by
        if w < 1 or h < 1:
            raise ValueError(f"the resize {self} makes nothing of a {width}x{height} image")
        return w, h

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) floats in [0, 1], resized."""
        width, height = self.size(x.shape[3], x.shape[2])
        if self.mode == "crop":
            x = _crop_to(x, width / height, self.position)
        return comfy_upscale(x, width, height, self.method, crop=False)


def _crop_to(x: torch.Tensor, aspect: float, position: str) -> torch.Tensor:
    """ImageResizeKJv2's crop: the largest part of ``x`` of that aspect, at ``position``."""
    old_h, old_w = x.shape[2], x.shape[3]
    if old_w / old_h > aspect:
        crop_w, crop_h = round(old_h * aspect), old_h
    else:
        crop_w, crop_h = old_w, round(old_w / aspect)
    left = {"left": 0, "right": old_w - crop_w}.get(position, (old_w - crop_w) // 2)
    top = {"top": 0, "bottom": old_h - crop_h}.get(position, (old_h - crop_h) // 2)
    return x.narrow(-1, left, crop_w).narrow(-2, top, crop_h)


def image_scale(text: str) -> ImageScale | ImageResize:
    """``--image_scale``'s two forms: ComfyUI's ImageScale (``METHOD:W*H[:center]``) or KJNodes' ImageResizeKJv2
    (``METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY]``), told apart by their third part."""
    parts = str(text).split(":")
    kj = len(parts) > 2 and parts[2] not in ("", "center", "disabled")  # (a third that is no crop: a MODE)
    return ImageResize.parse(text) if kj else ImageScale.parse(text)


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


def comfy_fit(
    image: Image.Image, width: int, height: int, scale: ImageScale | ImageResize | None = None
) -> torch.Tensor:
    """(3, height, width) float32 in [-1, 1]: the image as ComfyUI's Wan image nodes fit it (WanImageToVideo,
    WanFirstLastFrameToVideo, Wan22ImageToVideoLatent: ``common_upscale(..., "bilinear", "center")`` of LoadImage's
    ``uint8 / 255``, after an ImageScale or ImageResizeKJv2 node where ``scale`` is given): the centre cropped to the
    target's aspect, resized bilinear, then ``2 x - 1`` as its VAE takes it."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    if scale is not None:
        x = scale.apply(x)
    return (comfy_upscale(x, width, height)[0] * 2) - 1
