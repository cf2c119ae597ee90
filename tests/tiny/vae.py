"""Tiny VAE configs and random weights in the official layout."""

from __future__ import annotations

import torch

from wanflow.configs import WAN22_LATENT_MEAN, WAN22_LATENT_STD, VAEConfig
from wanflow.models.vae import WanVAE

# The shapes of diffusers.md's TINY_VAE_21 / TINY_VAE_22: full depth (dim_mult (1, 2, 4, 4), 2 residual blocks per
# stage), narrow widths. The published latent statistics are kept, so that a config inferred from the weights (which
# defaults to them for z 16 / z 48) equals these.
TINY_VAE21 = VAEConfig(version="2.1", base_dim=8, decoder_dim=8, z_dim=16)
TINY_VAE22 = VAEConfig(
    version="2.2",
    base_dim=8,
    decoder_dim=12,
    z_dim=48,
    patch_size=2,
    latents_mean=WAN22_LATENT_MEAN,
    latents_std=WAN22_LATENT_STD,
)


def random_vae_state(cfg: VAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout weights, all random: conv weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm gammas
    ~ 1 + N(0, 0.2^2)."""
    with torch.device("meta"):
        model = WanVAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("gamma"):
            state[name] = 1.0 + 0.2 * noise
        elif name.endswith("bias"):
            state[name] = 0.1 * noise
        else:
            state[name] = noise / (p[0].numel() ** 0.5)
    return state


def random_vae(cfg: VAEConfig, seed: int = 0) -> WanVAE:
    with torch.device("meta"):
        model = WanVAE(cfg)
    model.load_state_dict(random_vae_state(cfg, seed), assign=True)
    return model.eval()
