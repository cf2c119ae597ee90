"""VAE training: the loss against its parts, a few optimisation steps on a toy clip, and folding the latent
statistics into conv1/conv2 (decode(encode(x)) unchanged, latents ~N(0, 1) per channel, config untouched)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.tiny.vae import TINY_VAE21, TINY_VAE22, random_vae
from wanflow.training.vae import decode_raw, fold_latent_stats, kl_divergence, posterior, reconstruct, vae_loss

TINY = {"2.1": (TINY_VAE21, 16), "2.2": (TINY_VAE22, 32)}  # config, smallest frame size it takes


def toy_video(batch: int, size: int, frames: int = 5, seed: int = 0) -> torch.Tensor:
    """Smooth moving stripes with a random phase and colour per clip, in [-1, 1]: (B, 3, T, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    phase = torch.rand(batch, 1, 1, 1, 1, generator=gen) * 2 * math.pi
    colour = torch.rand(batch, 3, 1, 1, 1, generator=gen) * 2 - 1
    t = torch.arange(frames).view(1, 1, -1, 1, 1)
    y = torch.arange(size).view(1, 1, 1, -1, 1)
    x = torch.arange(size).view(1, 1, 1, 1, -1)
    wave = torch.sin(2 * math.pi * (x + y + 2 * t) / size + phase)
    return (0.8 * colour * wave).expand(batch, 3, frames, size, size).contiguous()


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_loss_decreases_on_a_toy_batch(version):
    cfg, size = TINY[version]
    torch.manual_seed(0)
    vae = random_vae(cfg).train()
    video = toy_video(2, size)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, parts = vae_loss(vae, video, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(parts["loss"]))
    assert losses[-1] < 0.7 * losses[0]


def test_loss_is_reconstruction_plus_weighted_kl():
    cfg, size = TINY["2.1"]
    vae = random_vae(cfg)
    video = toy_video(1, size)
    loss, parts = vae_loss(vae, video, kl_weight=0.5, recon="mse", generator=torch.Generator().manual_seed(4))
    out, mu, logvar = reconstruct(vae, video, torch.Generator().manual_seed(4))
    assert float(parts["recon"]) == pytest.approx(F.mse_loss(out, video).item(), rel=1e-6)
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per element
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean()
    assert float(parts["kl"]) == pytest.approx(kl.item(), rel=1e-6) == pytest.approx(kl_divergence(mu, logvar).item())
    assert loss.item() == pytest.approx(float(parts["recon"]) + 0.5 * float(parts["kl"]), rel=1e-6)
    l1, _ = vae_loss(vae, video, kl_weight=0.0, generator=torch.Generator().manual_seed(4))
    assert l1.item() == pytest.approx(F.l1_loss(out, video).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reconstruction loss"):
        vae_loss(vae, video, recon="lpips")


def test_weighted_reconstruction_is_the_weighted_pixel_mean():
    cfg, size = TINY["2.1"]
    vae = random_vae(cfg)
    video = toy_video(1, size)
    out, _, _ = reconstruct(vae, video, torch.Generator().manual_seed(4))
    per_pixel = (out - video).abs().mean(1, keepdim=True)  # (B, 1, T, H, W)
    weight = torch.ones_like(per_pixel)
    weight[..., : size // 2] = 9.0  # the left half counts nine times
    _, parts = vae_loss(vae, video, kl_weight=0.0, generator=torch.Generator().manual_seed(4), weight=weight)
    left, right = per_pixel[..., : size // 2].mean(), per_pixel[..., size // 2 :].mean()
    assert float(parts["recon"]) == pytest.approx(((9 * left + right) / 10).item(), rel=1e-5)


def test_latent_noise_decodes_the_mean_plus_noise_in_published_stds():
    cfg, size = TINY["2.2"]
    vae = random_vae(cfg)
    video = toy_video(2, size)
    _, parts = vae_loss(vae, video, kl_weight=0.0, generator=torch.Generator().manual_seed(5), latent_noise=0.5)
    g = torch.Generator().manual_seed(5)
    level = 0.5 * torch.rand(2, generator=g)  # one level per clip, then the noise
    mu, _ = posterior(vae, video)
    noise = torch.randn(mu.shape, generator=g)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    out = decode_raw(vae, mu + level.view(-1, 1, 1, 1, 1) * std * noise)
    assert float(parts["recon"]) == pytest.approx(F.l1_loss(out, video).item(), rel=1e-5)
    _, clean = vae_loss(vae, video, kl_weight=0.0, generator=torch.Generator().manual_seed(5))
    assert abs(float(clean["recon"]) - float(parts["recon"])) > 1e-4  # the noise reaches the decoder
    with pytest.raises(ValueError, match="latent_noise"):
        vae_loss(vae, video, latent_noise=-0.1)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_posterior_mean_path_is_the_models_encode_decode(version):
    cfg, size = TINY[version]
    vae = random_vae(cfg)
    video = toy_video(1, size, frames=9)
    with torch.no_grad():
        out, mu, _ = reconstruct(vae, video, sample=False)
        z = vae.encode(video)
        expected = vae.decode(z)
    mean, std = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose((mu - mean) / std, z, atol=1e-5)
    assert torch.allclose(out.clamp(-1, 1), expected, atol=1e-5)
    with pytest.raises(ValueError, match="frame count"):
        posterior(vae, video[:, :, :4])


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_fold_latent_stats(version):
    cfg, size = TINY[version]
    vae = random_vae(cfg)
    fit = [toy_video(2, size, seed=1), toy_video(1, size, frames=9, seed=2)]
    held_out = torch.rand(1, 3, 5, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        before = [vae.decode(vae.encode(v)) for v in [*fit, held_out]]
        z_before = vae.encode(fit[0])
    fold_latent_stats(vae, fit)
    assert vae.cfg == cfg  # the published statistics stay in the config
    with torch.no_grad():
        after = [vae.decode(vae.encode(v)) for v in [*fit, held_out]]
        z = torch.cat([vae.encode(v).transpose(0, 1).flatten(1) for v in fit], dim=1)  # (z, N)
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max() < 1e-5
    assert z.mean(1).abs().max() < 1e-4
    assert (z.std(1, unbiased=False) - 1).abs().max() < 1e-4
    assert not torch.allclose(z_before.mean((0, 2, 3, 4)), torch.zeros(cfg.z_dim), atol=0.1)  # it did change


def test_fold_rejects_constant_channels():
    cfg, size = TINY["2.1"]
    vae = random_vae(cfg)
    with torch.no_grad():
        vae.conv1.weight[3].zero_()  # mu channel 3 is now the constant bias
    with pytest.raises(ValueError, match=r"\[3\]"):
        fold_latent_stats(vae, toy_video(1, size))
    with pytest.raises(ValueError, match="at least one video"):
        fold_latent_stats(vae, [])
