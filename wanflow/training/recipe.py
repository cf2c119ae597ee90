"""The recipe of the built-in models: their sizes, training lengths and rates, and the prompts they learn."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wanflow.configs import WAN22_LATENT_MEAN, WAN22_LATENT_STD, DiTConfig, T5Config, VAEConfig
from wanflow.data.shapes import BACKGROUNDS, all_combos
from wanflow.tasks import TASKS

BUILTIN_TASKS = {task.builtin: name for name, task in TASKS.items()}  # built-in folder -> task name

VAE21 = VAEConfig(version="2.1", base_dim=16, decoder_dim=16, z_dim=16, num_res_blocks=1)

VAE22 = VAEConfig(
    version="2.2",
    base_dim=16,
    decoder_dim=16,
    num_res_blocks=1,
    z_dim=48,
    patch_size=2,
    latents_mean=WAN22_LATENT_MEAN,
    latents_std=WAN22_LATENT_STD,
)

T5 = T5Config(vocab_size=0, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2, text_len=32)

DIT = DiTConfig(dim=128, ffn_dim=384, text_dim=64, text_len=32, num_heads=2, num_layers=4)


@dataclass(frozen=True)
class Recipe:
    """Sizes and training lengths of the built-in models (the stage times are in docs/builtin-models.md)."""

    height: int = 64
    width: int = 64
    frames: int = 17  # rendered clip length; training windows are cut from these clips
    clip_frames: int = 9  # length of the generated videos: the DiTs train on each clip's first and last 9 frames
    fps: int = 8
    seed: int = 0
    clips: int = 1200  # training clips rendered once
    i2v_clips: int = 1200  # the first ones also train i2v (each window's first frame is the I2V condition)
    vae_steps: int = 4000
    vae_batch: int = 2  # >= 2 also keeps CPU conv3d on oneDNN (batch 1 falls back to a slow kernel)
    vae_frames: int = 9  # VAE training windows: 1 + 2 x 4 frames (the length generated), random starts
    vae21_crop: int = 32  # Wan 2.1 VAE windows cropped around the object (0: full frames); 4x cheaper at 64x64
    vae21_refine_steps: int = 2000  # then a second cosine cycle at half the rate (it still tells colours apart)
    # then its decoder alone on full frames (the encoder, so the latents, frozen), one cosine cycle at a quarter of
    # the rate per (steps, latent noise) entry; the noise (see vae_loss) makes it render a DiT's latents cleanly
    vae21_decoder_cycles: tuple[tuple[int, float], ...] = ((1500, 0.0), (3000, 0.3))
    vae22_crop: int = 0  # the Wan 2.2 VAE patchifies first, so full frames already cost as little
    vae22_refine_steps: int = 4000  # a second cycle at half the rate (its loss still fell fast after the first)
    vae22_decoder_cycles: tuple[tuple[int, float], ...] = ((3000, 0.0), (3000, 0.0))  # the same for Wan 2.2
    vae_lr: float = 1e-3
    vae_object_weight: float = 9.0  # extra loss weight of the object's pixels (see vae_loss)
    dit_steps: int = 4000
    dense_steps: int = 8000  # the dense DiT covers both experts' ranges: twice the steps, the same compute
    # then further cosine cycles per task, each at half the rate of the one before (the loss was still falling)
    dit_refine_steps: tuple[tuple[str, int], ...] = (
        ("t2v", 12000),
        ("t2v", 5000),
        ("i2v", 6000),
        ("i2v", 4000),
        ("ti2v", 12000),
        ("ti2v", 10000),
        ("ti2v", 10000),
    )
    # then cycles (continuing the halving) in which a sample's prompt leaves out its background phrase with probability
    # short_prompt_p: people write "a red circle moving right", and every prompt before named the background
    dit_prompt_steps: tuple[tuple[str, int], ...] = (
        ("t2v", 3000),
        ("i2v", 3000),
        ("ti2v", 5000),
        ("t2v", 3000),
        ("t2v", 3000),
    )
    short_prompt_p: float = 0.5
    dit_batch: int = 32
    lr: float = 5e-4
    cfg_drop: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    sample_steps: int = 20
    shift: float = 3.0
    guide_scale: float = 4.0
    vae21: VAEConfig = VAE21
    vae22: VAEConfig = VAE22
    t5: T5Config = T5  # vocab_size is set from the trained tokenizer
    dit: DiTConfig = DIT  # model type and channels are set per task
    dtype_on_disk: str = "float16"


def prompt_corpus(short: bool = False) -> list[str]:
    """Every prompt the dataset can produce (held-out combinations too: their words all occur in training); with
    ``short``, their forms without the background (the tokenizer is built from the long ones alone)."""
    from wanflow.data.shapes import Clip

    clips = [Clip(s, c, d, b, 1.0, 0.0, (0.0, 0.0)) for c, s, d in all_combos() for b in BACKGROUNDS]
    return sorted({clip.short_prompt if short else clip.prompt for clip in clips})


def pick(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (k,), generator=generator)


def cycle_name(stage: str, k: int) -> str:
    """The checkpoint name of a stage's ``k``-th cycle (from 1): ``stage``, then ``stage2``, ``stage3``..."""
    return stage if k == 1 else f"{stage}{k}"
