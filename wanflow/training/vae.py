"""Training the Wan VAEs: a reconstruction + KL objective, and folding the latent statistics into the weights.

Objective (``vae_loss``): the whole clip is encoded at once (no chunk cache; same result as the chunked path up to
rounding), a latent is sampled from the diagonal Gaussian posterior ``N(mu, exp(logvar))`` and decoded. The loss is
``recon + kl_weight * kl``:
- ``recon``: L1 (default) or MSE per pixel, on the unclamped decoder output. L1 is the pixel term Wan and most
  latent-video VAEs train with; it keeps edges sharper than MSE. Optional per-pixel ``weight`` (B, 1, T, H, W)
  gives a weighted mean: on data where a small object sits on a flat background (the built-in models' shapes),
  weighting the object's pixels keeps L1 from settling on the background colour (its median) everywhere.
- ``latent_noise`` (decoder fine-tuning): the decoder gets the posterior mean plus Gaussian noise at a level drawn
  per clip uniformly from ``[0, latent_noise]`` published latent stds (the unit of the latents a DiT denoises), so
  it learns to render the slightly-off latents a DiT ends on instead of overfitting to the encoder's exact ones.
- ``kl``: ``KL(N(mu, sigma^2) || N(0, 1))`` averaged per latent element, with a small weight (default 1e-6, the
  weight of Stable Diffusion's KL-f8 autoencoder). It only keeps the posterior from collapsing to a point or drifting
  in scale; the latent scale the DiT sees is fixed afterwards by ``fold_latent_stats``.
The perceptual (LPIPS) and adversarial terms of the original recipe are not included; add them to the returned loss
from outside when fine-tuning for quality (``reconstruct`` gives the decoded video).

After training, ``fold_latent_stats`` folds an affine map into ``conv1`` and ``conv2`` so that ``encode`` with the
published ``latents_mean``/``latents_std`` returns ~N(0, 1) latents per channel while ``decode(encode(x))`` is
unchanged; the checkpoint keeps the official layout and config.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from wanflow.models.vae import WanVAE
from wanflow.models.vae_blocks import patchify, unpatchify

RECON_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in float32


def posterior(vae: WanVAE, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised posterior ``(mu, logvar)``, each (B, z, T', H', W'), of a video (B, 3, T, H, W) in [-1, 1]."""
    vae._check_video(video)
    h = vae.encoder(patchify(video.to(vae.dtype), vae.cfg.patch_size))  # whole sequence, no chunk cache
    mu, logvar = vae.conv1(h).chunk(2, dim=1)
    return mu, logvar.clamp(*LOGVAR_RANGE)


def decode_raw(vae: WanVAE, mu: torch.Tensor) -> torch.Tensor:
    """Un-normalised latents -> video (B, 3, T, H, W), whole sequence, not clamped (gradients pass everywhere)."""
    return unpatchify(vae.decoder(vae.conv2(mu)), vae.cfg.patch_size)


def reconstruct(
    vae: WanVAE,
    video: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
    latent_noise: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(reconstruction, mu, logvar)``; the decoder sees a posterior sample (``sample``), the mean, or with
    ``latent_noise`` > 0 the mean plus noise of ``U(0, latent_noise)`` published latent stds per clip (see the
    module doc)."""
    mu, logvar = posterior(vae, video)
    z = mu
    if latent_noise:
        level = latent_noise * _draw(torch.rand, (len(mu), 1, 1, 1, 1), generator, mu)
        z = mu + level * _published(vae, mu)[1] * _draw(torch.randn, mu.shape, generator, mu)
    elif sample:
        z = mu + torch.exp(0.5 * logvar) * _draw(torch.randn, mu.shape, generator, mu)
    return decode_raw(vae, z), mu, logvar


def _draw(fn, shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``fn`` (torch.rand / randn) numbers from ``generator``, on its device, moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return fn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` averaged over latent elements."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


def vae_loss(
    vae: WanVAE,
    video: torch.Tensor,
    kl_weight: float = 1e-6,
    recon: str = "l1",
    generator: torch.Generator | None = None,
    weight: torch.Tensor | None = None,
    latent_noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, {"recon", "kl", "loss"})`` for a video batch (B, 3, 1 + 4k, H, W) in [-1, 1]; see the module doc.
    The parts are detached 0-d tensors (no host sync per step; ``float()`` one to print it)."""
    if recon not in RECON_LOSSES:
        raise ValueError(f"unknown reconstruction loss {recon!r}; choose one of {sorted(RECON_LOSSES)}")
    if latent_noise < 0:
        raise ValueError(f"latent_noise is a noise level in latent stds, >= 0; got {latent_noise}")
    out, mu, logvar = reconstruct(vae, video, generator, latent_noise=latent_noise)
    if weight is None:
        rec = RECON_LOSSES[recon](out.float(), video.float())
    else:
        per_pixel = RECON_LOSSES[recon](out.float(), video.float(), reduction="none").mean(1, keepdim=True)
        rec = (per_pixel * weight).sum() / weight.expand_as(per_pixel).sum()
    kl = kl_divergence(mu, logvar)
    loss = rec + kl_weight * kl
    return loss, {"recon": rec.detach(), "kl": kl.detach(), "loss": loss.detach()}


@torch.no_grad()
def latent_moments(vae: WanVAE, videos: Iterable[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std, float64 (z,), of the un-normalised ``mu`` that ``encode`` computes."""
    if isinstance(videos, torch.Tensor):
        videos = [videos]
    total = square = count = 0
    for video in videos:
        z = vae.encode(video).double()  # (B, z, T', H', W'), normalised with the config's statistics
        mean, std = _published(vae, z)
        mu = (z * std + mean).transpose(0, 1).flatten(1)  # (z, N)
        total, square, count = total + mu.sum(1), square + mu.pow(2).sum(1), count + mu.shape[1]
    if count == 0:
        raise ValueError("fold_latent_stats needs at least one video")
    m = total / count
    return m, (square / count - m.pow(2)).clamp(min=0).sqrt()


def _published(vae: WanVAE, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The config's latents_mean and latents_std, shaped (1, z, 1, 1, 1)."""
    kw = {"dtype": like.dtype, "device": like.device}
    shape = (1, -1, 1, 1, 1)
    return torch.tensor(vae.cfg.latents_mean, **kw).view(shape), torch.tensor(vae.cfg.latents_std, **kw).view(shape)


@torch.no_grad()
def fold_latent_stats(vae: WanVAE, videos: Iterable[torch.Tensor] | torch.Tensor, min_std: float = 1e-6) -> None:
    """Make ``vae.encode`` return ~N(0, 1) latents per channel on ``videos``, keeping ``decode(encode(x))``.

    With m, s the per-channel moments of ``mu`` on ``videos`` and M, S the published statistics, the new mean output
    is ``mu' = M + (S / s)(mu - m)``, so ``encode = (mu' - M) / S = (mu - m) / s``. Folded into the weights:
    ``conv1``'s mu rows are scaled by ``a = S / s`` and shifted by ``c = M - a m``, its logvar rows shifted by
    ``2 log a`` (the same affine map applied to the posterior), and ``conv2`` takes ``(mu' - c) / a``:
    its columns are divided by ``a`` and its bias loses ``W2 (c / a)``. Computed in float64, stored in place.
    """
    m, s = latent_moments(vae, videos)
    if bool((s < min_std).any()):
        raise ValueError(f"latent channels {torch.nonzero(s < min_std).flatten().tolist()} are constant on the videos")
    z = vae.cfg.z_dim
    mean = torch.tensor(vae.cfg.latents_mean, dtype=torch.float64, device=m.device)
    std = torch.tensor(vae.cfg.latents_std, dtype=torch.float64, device=m.device)
    a = std / s
    c = mean - a * m
    w1, b1 = vae.conv1.weight.double().clone(), vae.conv1.bias.double().clone()  # (2z, 2z, 1, 1, 1), (2z,)
    w1[:z] *= a.view(-1, 1, 1, 1, 1)
    b1[:z] = a * b1[:z] + c
    b1[z:] += 2 * a.log()
    w2, b2 = vae.conv2.weight.double().clone(), vae.conv2.bias.double().clone()  # (z, z, 1, 1, 1), (z,)
    b2 -= w2.flatten(1) @ (c / a)
    w2 /= a.view(1, -1, 1, 1, 1)
    for param, value in ((vae.conv1.weight, w1), (vae.conv1.bias, b1), (vae.conv2.weight, w2), (vae.conv2.bias, b2)):
        param.copy_(value)
