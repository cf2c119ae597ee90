"""The resize nodes Wan workflows put before the Wan image node: ComfyUI's ImageScale and KJNodes' ImageResizeKJv2,
each as ``--image_scale`` takes it (``image_scale`` tells the two forms apart) and as the node resizes: bit for bit
against the nodes run as oracles (tests/io/comfy_scale.json, kj_resize.json)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import ImageColor

from wanflow.io.image import UPSCALE_METHODS, comfy_upscale


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


# (ImagePadKJ's fills)
PAD_MODES = {"pad": "color", "pad_edge": "edge", "pad_edge_pixel": "edge_pixel", "pillarbox_blur": "pillarbox_blur"}
RESIZE_MODES = ("stretch", "resize", "crop", "total_pixels", *PAD_MODES)  # ImageResizeKJv2's
RESIZE_POSITIONS = ("center", "top", "bottom", "left", "right")


@dataclass(frozen=True)
class ImageResize:
    """KJNodes' ImageResizeKJv2 node (kijai/ComfyUI-KJNodes, 2025-06 to 2026-08) on an input image before its Wan
    image node: ``mode`` stretch (to ``width`` x ``height``), resize (the largest size of the image's aspect within
    them), crop (the image cropped to their aspect at ``position``, then scaled to them), total_pixels (the image's
    aspect at ``width * height`` pixels), or pad, pad_edge, pad_edge_pixel, pillarbox_blur (resize's, then padded out
    to them at ``position``: with ``pad_color``, each side's mean edge colour, its edge pixels, or the image itself
    scaled to cover, blurred, desaturated and dimmed); a side 0 keeps the image's
    (stretch, crop) or its aspect (resize); the sides then cut down to multiples of ``divisible_by`` (a padded image
    padded on to the next multiple); scaled by ``method`` as ComfyUI's ``common_upscale``. Its size outputs are the
    resized image's (``size``), which Wan workflows feed the Wan node."""

    method: str
    width: int
    height: int
    mode: str
    position: str = "center"
    divisible_by: int = 2  # (the node's default)
    pad_color: str = "0, 0, 0"  # (the pad mode's; the node's text: "R, G, B", 0-255 or 0-1, "#RRGGBB" or a name)

    @classmethod
    def parse(cls, text: str) -> ImageResize:
        """``METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY][:PAD_COLOR]``, e.g. ``lanczos:832*480:crop:center:16``."""
        method, size, mode, *rest = [*str(text).split(":", 5), "", "", ""][:6]
        position, by, color = (rest[0] or "center"), (rest[1] or "2"), (rest[2] or "0, 0, 0")
        width, _, height = size.replace("x", "*").partition("*")
        if (
            method not in UPSCALE_METHODS
            or mode not in RESIZE_MODES
            or position not in RESIZE_POSITIONS
            or not (width.isdigit() and height.isdigit() and by.isdigit())
        ):
            raise ValueError(
                f"a KJNodes resize is METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY][:PAD_COLOR], METHOD one of "
                f"{', '.join(UPSCALE_METHODS)}, MODE one of {', '.join(RESIZE_MODES)}, POSITION one of "
                f"{', '.join(RESIZE_POSITIONS)}; got {text!r}"
            )
        resize = cls(method, int(width), int(height), mode, position, int(by), color)
        if mode in PAD_MODES:
            pad_rgb(color)  # (a colour it cannot read: an error here)
            if not (resize.width and resize.height):
                raise ValueError(f"{mode} pads the image out to W*H: give both sides, got {text!r}")
        return resize

    def __str__(self) -> str:
        text = f"{self.method}:{self.width}*{self.height}:{self.mode}:{self.position}:{self.divisible_by}"
        return text + (f":{self.pad_color}" if self.mode in PAD_MODES else "")

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the node makes of an image of ``width`` x ``height`` (its size outputs)."""
        w, h, (left, right, top, bottom) = self._layout(width, height)
        return w + left + right, h + top + bottom

    def _layout(self, width: int, height: int) -> tuple[int, int, tuple[int, int, int, int]]:
        """The scaled image's (width, height) and the padding around it (left, right, top, bottom)."""
        w, h, pads = self.width, self.height, (0, 0, 0, 0)
        if self.mode == "total_pixels":
            w, h = int(math.sqrt(w * h * (width / height))), int(math.sqrt(w * h / (width / height)))
        elif self.mode in ("resize", *PAD_MODES):
            if w == 0 and h == 0:
                w, h = width, height
            elif w == 0:
                w = round(width * (h / height))
            elif h == 0:
                h = round(height * (w / width))
            else:
                ratio = min(w / width, h / height)
                fitted = round(width * ratio), round(height * ratio)
                if self.mode in PAD_MODES:
                    pads = _pads(w - fitted[0], h - fitted[1], self.position)
                w, h = fitted
        else:
            w, h = w or width, h or height
        if self.divisible_by > 1:
            w, h = w - w % self.divisible_by, h - h % self.divisible_by
        if w < 1 or h < 1:
            raise ValueError(f"the resize {self} makes nothing of a {width}x{height} image")
        if self.divisible_by > 1 and any(p > 0 for p in pads):  # (the padded image on to the next multiple)
            left, right, top, bottom = pads
            right += -(w + left + right) % self.divisible_by
            bottom += -(h + top + bottom) % self.divisible_by
            pads = left, right, top, bottom
        return w, h, pads

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) floats in [0, 1], resized."""
        width, height, pads = self._layout(x.shape[3], x.shape[2])
        if self.mode == "crop":
            x = _crop_to(x, width / height, self.position)
        x = comfy_upscale(x, width, height, self.method, crop=False)
        return _padded(x, pads, PAD_MODES[self.mode], self.pad_color) if any(p > 0 for p in pads) else x


def _pads(extra_w: int, extra_h: int, position: str) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) for an image ``extra_w`` x ``extra_h`` short of the size, at ``position``."""
    left = {"left": 0, "right": extra_w}.get(position, extra_w // 2)
    top = {"top": 0, "bottom": extra_h}.get(position, extra_h // 2)
    return left, extra_w - left, top, extra_h - top


def _padded(x: torch.Tensor, pads: tuple[int, int, int, int], fill: str, color: str) -> torch.Tensor:
    """KJNodes' ImagePadKJ on (1, 3, h, w): ``fill`` "color" (``color``), "edge" (each side's mean edge colour; the
    left and right over the corners) or "edge_pixel" (the edge pixels, the corner pixels in the corners); worked in
    its channels-last layout, so that the means are its own."""
    left, right, top, bottom = pads
    image = x.movedim(1, -1)[0].contiguous()  # (h, w, 3), laid out as the node's (its means' sums in its order)
    h, w, c = image.shape
    out = torch.zeros((h + top + bottom, w + left + right, c), dtype=image.dtype, device=image.device)
    if fill == "edge":
        out[:top], out[top + h :] = image[0].mean(dim=0), image[h - 1].mean(dim=0)
        out[:, :left], out[:, left + w :] = image[:, 0].mean(dim=0), image[:, w - 1].mean(dim=0)
    elif fill == "edge_pixel":
        out[:top, left : left + w], out[top + h :, left : left + w] = image[0], image[h - 1]
        out[top : top + h, :left] = image[:, 0].unsqueeze(1)
        out[top : top + h, left + w :] = image[:, w - 1].unsqueeze(1)
        out[:top, :left], out[:top, left + w :] = image[0, 0], image[0, w - 1]
        out[top + h :, :left], out[top + h :, left + w :] = image[h - 1, 0], image[h - 1, w - 1]
    elif fill == "pillarbox_blur":
        out[:] = _pillarbox(image, *out.shape[:2])
    else:
        out[:] = torch.tensor([v / 255.0 for v in pad_rgb(color)], dtype=image.dtype, device=image.device)
    out[top : top + h, left : left + w] = image
    return out.movedim(-1, 0)[None]


def _pillarbox(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ImagePadKJ's pillarbox_blur background: ``image`` (h, w, c) scaled bilinear to cover (height, width), its centre
    cut out (replicated out where short), blurred (a Gaussian of sigma ``max(1, 0.006 min(height, width))``, one
    axis then the other), 20% desaturated towards its luma and dimmed to 35%; (height, width, c)."""
    h, w = image.shape[:2]
    fill = max(width / float(w), height / float(h))
    bg_w, bg_h = max(1, round(w * fill)), max(1, round(h * fill))
    bg = F.interpolate(image.movedim(-1, 0).unsqueeze(0), size=(bg_h, bg_w), mode="bilinear")
    y0, x0 = max(0, (bg_h - height) // 2), max(0, (bg_w - width) // 2)
    bg = bg[:, :, y0 : min(bg_h, y0 + height), x0 : min(bg_w, x0 + width)]
    if bg.shape[2] != height or bg.shape[3] != width:
        short_h, short_w = height - bg.shape[2], width - bg.shape[3]
        top, left = max(0, short_h // 2), max(0, short_w // 2)
        bg = F.pad(bg, (left, max(0, short_w - left), top, max(0, short_h - top)), mode="replicate")
    bg = _blurred(bg, max(1.0, 0.006 * float(min(height, width))))
    r, g, b = bg[:, 0:1], bg[:, 1:2], bg[:, 2:3]
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    bg[:, 0:3] = torch.cat([r, g, b], dim=1) * (1.0 - 0.2) + torch.cat([luma, luma, luma], dim=1) * 0.2
    return torch.clamp(bg * 0.35, 0.0, 1.0).squeeze(0).movedim(0, -1)


def _blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of (1, c, h, w), zero-padded, as ImagePadKJ blurs."""
    radius = max(1, int(3.0 * float(sigma)))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps * taps) / (2.0 * float(sigma) * float(sigma)))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def pad_rgb(text: str) -> list[int]:
    """A pad colour as KJNodes reads it: "R, G, B" (0-255, or 0-1 where every value is), one grey value,
    "#RRGGBB" or a colour name; 0-255 integers, clipped."""
    text = str(text)
    try:
        if "," in text:
            values = [float(v.strip()) for v in text.split(",")]
            rgb = [int(v * 255) for v in values] if all(0 <= v <= 1 for v in values) else [int(v) for v in values]
        elif text.startswith("#") or (text.isalnum() and not text.replace(".", "", 1).isdigit()):
            hexa = text.lstrip("#")
            is_hex = len(hexa) == 6 and all(ch in "0123456789ABCDEFabcdef" for ch in hexa)
            rgb = [int(hexa[i : i + 2], 16) for i in (0, 2, 4)] if is_hex else list(ImageColor.getrgb(text))
        else:
            value = float(text.strip())
            rgb = [int(value * 255) if 0 <= value <= 1 else int(value)] * 3
    except ValueError:
        raise ValueError(f"a pad colour is 'R, G, B', a grey value, '#RRGGBB' or a colour name; got {text!r}") from None
    if len(rgb) != 3:
        raise ValueError(f"a pad colour has three channels (KJNodes fails on others); got {text!r}")
    return [min(max(v, 0), 255) for v in rgb]


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
