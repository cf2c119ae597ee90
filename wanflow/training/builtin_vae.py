"""The VAE stages of the built-in recipe: two cosine cycles on windows of the clips (around the object for the
Wan 2.1 VAE), the latent statistics folded in, then the decoder alone on full frames."""

from __future__ import annotations

from pathlib import Path

import torch

from wanflow.configs import VAEConfig
from wanflow.models.vae import WanVAE
from wanflow.training.loop import TrainConfig, train
from wanflow.training.recipe import Recipe, cycle_name, pick
from wanflow.training.vae import fold_latent_stats, vae_loss


def object_mask(video: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, T, H, W): 1 where a pixel differs from the clip's background, read at its top-left pixel (objects keep
    a margin from the border)."""
    return ((video - video[..., :1, :1]).abs().sum(1, keepdim=True) > threshold).float()


def object_crop(video: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` x ``size`` crops (B, C, T, size, size) of clips whose last channel is their object mask, each around
    its object (the mask's centroid over the window, jittered by up to a quarter crop): no crop is only background."""
    mask = video[:, -1].sum(1)  # (B, H, W) the last channel is the object mask
    height, width = video.shape[-2:]
    crops = []
    for clip, m in zip(video, mask, strict=True):
        total = m.sum().clamp(min=1.0)
        cy = float((m.sum(1) * torch.arange(height)).sum() / total) if m.any() else height / 2
        cx = float((m.sum(0) * torch.arange(width)).sum() / total) if m.any() else width / 2
        jy, jx = ((torch.rand(2, generator=generator) - 0.5) * size / 2).tolist()
        y0 = min(max(round(cy + jy - size / 2), 0), height - size)
        x0 = min(max(round(cx + jx - size / 2), 0), width - size)
        crops.append(clip[..., y0 : y0 + size, x0 : x0 + size])
    return torch.stack(crops)


def _window_loss(
    vae: WanVAE, videos: torch.Tensor, recipe: Recipe, crop: int, generator: torch.Generator, latent_noise: float = 0.0
):
    """The VAE loss on a batch of random ``vae_frames`` windows, the object's pixels weighted up."""
    idx = pick(len(videos), recipe.vae_batch, generator)
    t0 = int(torch.randint(0, recipe.frames - recipe.vae_frames + 1, (1,), generator=generator))
    clip = videos[idx, :, t0 : t0 + recipe.vae_frames]
    mask = object_mask(clip)  # before cropping: a crop's corner may lie inside the object
    if crop:
        clip, mask = object_crop(torch.cat([clip, mask], 1), crop, generator).split([3, 1], dim=1)
    weight = 1.0 + recipe.vae_object_weight * mask
    return vae_loss(vae, clip, generator=generator, weight=weight, latent_noise=latent_noise)[0]


def _vae_train_config(recipe: Recipe, steps: int, lr: float) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        lr=lr,
        warmup=min(50, steps // 10),
        seed=recipe.seed,
        checkpoint_every=250,
        log_every=25,
        batch_size=recipe.vae_batch,
    )


def train_vae(cfg: VAEConfig, videos: torch.Tensor, recipe: Recipe, work: Path) -> WanVAE:
    """A VAE trained on ``videos`` windows, its latent statistics folded in. Each gets a second, gentler cycle (after
    4000 steps the Wan 2.1 VAE, trained on crops, decodes cyan and magenta as blue; the Wan 2.2 VAE's loss is still
    falling fast). Then the decoder of each is fine-tuned alone on full frames (see polish_decoder), one cosine cycle
    per ``vae2x_decoder_cycles`` entry: the Wan 2.1 one has only seen crops, and the Wan 2.2 one, whose 4x4 latents of
    a 64x64 frame hold an object in about one latent pixel, decodes most shapes as blobs."""
    torch.manual_seed(recipe.seed)
    vae = WanVAE(cfg)
    with torch.no_grad():  # start with a narrow posterior: unit variance noise would drown the small initial mu
        vae.conv1.bias[cfg.z_dim :] = -8.0
    crop, refine_steps, decoder_cycles = _vae_plan(recipe, cfg.version)

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        return _window_loss(vae, videos, recipe, crop, generator)

    train(vae, loss_fn, _vae_train_config(recipe, recipe.vae_steps, recipe.vae_lr), work / f"vae{cfg.version}.ckpt")
    if refine_steps:
        tc = _vae_train_config(recipe, refine_steps, recipe.vae_lr / 2)
        train(vae, loss_fn, tc, work / f"vae{cfg.version}-refine.ckpt")
    vae.eval().requires_grad_(False)
    fold_latent_stats(vae, [videos[i : i + 16] for i in range(0, min(len(videos), 128), 16)])
    for k, (steps, noise) in enumerate(decoder_cycles, 1):
        stage = cycle_name(f"vae{cfg.version}-decoder", k)
        polish_decoder(vae, videos, recipe, steps, work / f"{stage}.ckpt", noise)
    return vae


def _vae_plan(recipe: Recipe, version: str) -> tuple[int, int, tuple[tuple[int, float], ...]]:
    """``(crop, refine steps, decoder cycles)`` of the Wan ``version`` VAE in ``recipe``."""
    if version == "2.1":
        return recipe.vae21_crop, recipe.vae21_refine_steps, recipe.vae21_decoder_cycles
    return recipe.vae22_crop, recipe.vae22_refine_steps, recipe.vae22_decoder_cycles


def polish_decoder(
    vae: WanVAE, videos: torch.Tensor, recipe: Recipe, steps: int, checkpoint: Path, latent_noise: float = 0.0
) -> None:
    """Fine-tune ``conv2`` and the decoder on full-frame windows with the encoder frozen: ``encode`` (so every latent
    the DiTs learn) is unchanged, and the decoder, trained on crops so far, learns whole frames (the first one too);
    with ``latent_noise`` (see vae_loss) it also learns to render latents a little off the encoder's."""
    vae.requires_grad_(False)
    for part in (vae.conv2, vae.decoder):
        part.requires_grad_(True)
    tc = _vae_train_config(recipe, steps, recipe.vae_lr / 4)
    train(vae, lambda step, g: _window_loss(vae, videos, recipe, 0, g, latent_noise), tc, checkpoint)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae: WanVAE, videos: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([vae.encode(videos[i : i + batch]) for i in range(0, len(videos), batch)])
