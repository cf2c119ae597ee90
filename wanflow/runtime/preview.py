"""Live previews: a cheap picture of where sampling is heading, every few steps, without running the VAE.

A linear map from each latent pixel's z channels to RGB in [-1, 1] (z x 3 weights and a bias: ComfyUI's
"latent2rgb" previewer) is applied to the current data estimate ``x0 = latents - sigma * velocity`` of the middle
latent frame, and the picture is scaled up by the VAE's stride (``Preview``, a step hook).

A checkpoint's map (``load_preview_map``): ``preview.json`` beside it (the built-in models ship one, fitted by least
squares to their own VAE on their own data: ``fit_to_vae``, run by ``wanflow calibrate-cache --preview``), else
ComfyUI's published factors for the Wan 2.1 or Wan 2.2 VAE (``preview_published.json``, with its source).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wanflow.sampling.hooks import Step, StepHook, Velocity

PREVIEW_FILE = "preview.json"
PUBLISHED_FILE = Path(__file__).with_name("preview_published.json")
DEFAULT_EVERY = 2  # steps between two previews (the last step always shows)
NOISE = 0.5  # latent noise (in latent stds) of half the pairs a map is fitted on (``fit_to_vae``)


@dataclass(frozen=True)
class PreviewMap:
    """RGB in [-1, 1] = latent (z channels) @ weight + bias."""

    weight: torch.Tensor  # (z, 3)
    bias: torch.Tensor  # (3,)
    source: str = ""

    def rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """(z, H, W) normalised latents -> (3, H, W) RGB in [-1, 1]."""
        w, b = self.weight.to(latent.device), self.bias.to(latent.device)
        return (torch.einsum("zhw,zc->chw", latent.float(), w) + b[:, None, None]).clamp(-1, 1)

    @classmethod
    def from_json(cls, data: dict, source: str) -> PreviewMap:
        weight = torch.tensor(data["weight"], dtype=torch.float32)
        bias = torch.tensor(data["bias"], dtype=torch.float32)
        if weight.ndim != 2 or weight.shape[1] != 3 or bias.shape != (3,):
            raise ValueError(f"{source}: a preview map needs 'weight' (z rows of 3) and 'bias' (3 numbers)")
        return cls(weight, bias, source)

    def to_json(self, **made_with: object) -> dict:
        rows = [[round(v, 5) for v in row] for row in self.weight.tolist()]
        return {**made_with, "weight": rows, "bias": [round(v, 5) for v in self.bias.tolist()]}


def load_preview_map(root: Path | None, vae_version: str, z_dim: int) -> PreviewMap:
    """The map of the checkpoint in ``root``: its ``preview.json``, else ComfyUI's for its VAE version."""
    path = None if root is None else Path(root) / PREVIEW_FILE
    if path is not None and path.is_file():
        found = PreviewMap.from_json(json.loads(path.read_text()), str(path))
    else:
        published = json.loads(PUBLISHED_FILE.read_text())
        if vae_version not in published:
            raise ValueError(f"no preview map for a Wan {vae_version} VAE; write {PREVIEW_FILE} beside the checkpoint")
        found = PreviewMap.from_json(published[vae_version], f"published ({published['source']})")
    if found.weight.shape[0] != z_dim:
        raise ValueError(f"{found.source}: the preview map has {found.weight.shape[0]} channels, the VAE {z_dim}")
    return found


def fit_preview_map(latents: torch.Tensor, rgb: torch.Tensor, source: str = "") -> PreviewMap:
    """Least squares ``rgb ~ latents @ weight + bias`` over N latent pixels: latents (N, z), rgb (N, 3)."""
    design = torch.cat([latents.double(), torch.ones(len(latents), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, rgb.double()).solution  # (z + 1, 3)
    return PreviewMap(solution[:-1].float(), solution[-1].float(), source)


def pixel_targets(video: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(3, F, H, W) video -> (3, T', H/s, W/s): the mean colour under each latent pixel (frame 0 alone, then groups
    of ``stride[0]`` frames, as the causal VAE compresses time)."""
    st, sh, sw = stride
    groups = [video[:, :1]] + [video[:, i : i + st] for i in range(1, video.shape[1], st)]
    frames = torch.stack([g.mean(dim=1) for g in groups], dim=1)  # (3, T', H, W)
    return F.avg_pool2d(frames.transpose(0, 1), (sh, sw)).transpose(0, 1)


@torch.no_grad()
def fit_to_vae(
    vae: nn.Module, videos: Sequence[torch.Tensor], noise: float = NOISE, seed: int = 0, source: str = ""
) -> PreviewMap:
    """Fit the map of ``vae`` on ``videos`` ((3, F, H, W) in [-1, 1] each): their latents against their mean colours,
    and the same latents plus ``noise`` x Gaussian noise against the mean colours the decoder draws from them. A
    sampler's latents are not the encoder's (the decoder forgives much), and a map fitted on encoder latents alone
    amplifies what the decoder ignores; the noisy pairs teach it to ignore the same."""
    device = next(vae.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    latents, colours = [], []
    for video in videos:
        z = vae.encode(video[None].to(device, vae.dtype)).float().cpu()
        noisy = z + noise * torch.randn(z.shape, generator=generator)
        decoded = vae.decode(noisy.to(device, vae.dtype))[0].float().cpu()
        for latent, pixels in ((z[0], video.float().cpu()), (noisy[0], decoded)):
            latents.append(latent.flatten(1).T)
            colours.append(pixel_targets(pixels, vae.cfg.stride).flatten(1).T)
    return fit_preview_map(torch.cat(latents), torch.cat(colours), source)


def preview_image(preview_map: PreviewMap, latents: torch.Tensor, scale: int) -> Image.Image:
    """The middle latent frame of sample 0 of (B, z, T, H, W) latents as an RGB image, ``scale`` times larger."""
    rgb = preview_map.rgb(latents[0, :, latents.shape[2] // 2])
    pixels = ((rgb + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(pixels)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``path`` so that a reader never sees half a file: a temporary file beside it, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Preview(StepHook):
    """Every ``every`` steps and after the last, renders the data estimate ``x0 = latents - sigma * v`` of the step
    (sigma ~ timestep / 1000) and hands the image to ``show(image, step)``."""

    def __init__(
        self,
        preview_map: PreviewMap,
        show: Callable[[Image.Image, Step], None],
        scale: int = 1,
        every: int = DEFAULT_EVERY,
    ):
        if every < 1:
            raise ValueError(f"previews come every n >= 1 steps, got {every}")
        self.preview_map, self.show, self.scale, self.every = preview_map, show, scale, every
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def due(self, step: Step) -> bool:
        return (step.index + 1) % self.every == 0 or step.index == step.total - 1

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        if not self.due(step):
            return velocity

        def seen(model, latents, t, cond, scale):
            v = velocity(model, latents, t, cond, scale)
            self._seen = (latents, v)
            return v

        return seen

    def after(self, step: Step, latents: torch.Tensor) -> None:
        if self._seen is None:
            return
        x, v = self._seen
        self._seen = None
        self.show(preview_image(self.preview_map, x - step.timestep / 1000 * v, self.scale), step)

    def end(self) -> None:
        self._seen = None
