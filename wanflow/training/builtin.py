"""The recipe that trains wanflow's three built-in models from scratch on the synthetic shapes dataset.

    wanflow train-builtin --out wanflow/builtin

Stages (each resumes from its checkpoint under ``--work`` if interrupted):
1. render the training clips (``wanflow.data.shapes``), held-out (colour, shape, direction) combinations excluded,
   and a word-level sentencepiece tokenizer of the prompt vocabulary;
2. the Wan 2.2 VAE (for ti2v) and the Wan 2.1 VAE (for t2v / i2v), each in two cosine cycles, then their latent
   statistics folded in, then their decoders alone with the encoders (so the latents) frozen;
3. the DiTs with flow matching on the VAE latents of each clip's two 9-frame ends, each model with its own small
   umT5 encoder trained jointly: the dense ti2v model (half of its samples conditioned on the first frame), t2v's
   two experts (each on its own side of the boundary, as Wan 2.2 trains them), i2v's two experts; then further
   cosine cycles, each at half the rate of the one before (``dit_refine_steps``), the last ones with prompts that
   often leave out the background (``dit_prompt_steps``);
4. each model written in the official layout (fp16 safetensors / .pth) with its sampling defaults in
   ``wanflow.json``, so it loads through exactly the code path of the published checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from wanflow.checkpoints.io import write_folder
from wanflow.checkpoints.layouts import DEFAULTS_FILE, OFFICIAL_T5, OFFICIAL_TOKENIZER, OFFICIAL_VAES
from wanflow.checkpoints.maps.t5 import T5_KEYMAP, drop_tied
from wanflow.configs import TASKS, WAN22_LATENT_MEAN, WAN22_LATENT_STD, DiTConfig, T5Config, VAEConfig
from wanflow.data.shapes import BACKGROUNDS, all_combos, render_batch, sample_clips
from wanflow.io.video import from_uint8
from wanflow.models.dit import WanDiT
from wanflow.models.text_encoder import TextEncoder, build_umt5, pad_context
from wanflow.models.vae import WanVAE
from wanflow.sampling.experts import HIGH, LOW
from wanflow.training.flow import (
    expert_range,
    flow_matching_loss,
    image_condition,
    maybe_drop_context,
    sample_timesteps,
)
from wanflow.training.loop import TrainConfig, train
from wanflow.training.tokenizer import build_tokenizer
from wanflow.training.vae import fold_latent_stats, vae_loss

log = logging.getLogger(__name__)

BUILTIN_TASKS = {"t2v": "t2v-A14B", "i2v": "i2v-A14B", "ti2v": "ti2v-5B"}


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
    """Sizes and training lengths of the built-in models (the stage times are in the README)."""

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


def _pick(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (k,), generator=generator)


def _window_loss(
    vae: WanVAE, videos: torch.Tensor, recipe: Recipe, crop: int, generator: torch.Generator, latent_noise: float = 0.0
):
    """The VAE loss on a batch of random ``vae_frames`` windows, the object's pixels weighted up."""
    idx = _pick(len(videos), recipe.vae_batch, generator)
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
        stage = _cycle_name(f"vae{cfg.version}-decoder", k)
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


@dataclass
class TextTable:
    """Contexts of every training prompt, computed by the (possibly training) text encoder on demand."""

    encoder: TextEncoder
    prompts: list[str]
    text_len: int

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.tokenize(self.prompts)

    def contexts(self, index: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, text_len, dim) zero-padded states of prompts ``index``, with gradients into the encoder."""
        hidden = self.encoder.model(input_ids=ids[index], attention_mask=mask[index]).last_hidden_state
        lengths = mask[index].sum(1)
        states = [h[:n] for h, n in zip(hidden, lengths.tolist(), strict=True)]
        return pad_context(states, self.text_len)


def train_dits(
    experts: dict[str, WanDiT],
    boundary: float | None,
    latents: torch.Tensor,
    prompt_ids: torch.Tensor,
    table: TextTable,
    recipe: Recipe,
    work: Path,
    name: str,
    y: torch.Tensor | None = None,
    frame0_p: float = 0.0,
    train_text: bool = False,
    short_ids: torch.Tensor | None = None,
) -> None:
    """Flow matching for ``experts`` (each on its own timestep range) on pre-encoded latents. ``prompt_ids`` index
    ``table.prompts`` per latent; ``short_ids`` the same prompts without their background, used by the cycles
    that ask for them (``dit_prompt_steps``)."""
    ids, mask = table.tokens()
    null_index = torch.tensor([len(table.prompts) - 1])  # the last prompt is the empty one

    def loss_fn(step: int, generator: torch.Generator, short_p: float) -> torch.Tensor:
        idx = _pick(len(latents), recipe.dit_batch, generator)
        x0 = latents[idx]
        index = prompt_ids[idx]
        if short_p:
            index = torch.where(torch.rand(len(idx), generator=generator) < short_p, short_ids[idx], index)
        context = table.contexts(index, ids, mask)
        null = table.contexts(null_index, ids, mask)
        context = maybe_drop_context(context, null, recipe.cfg_drop, generator)
        frame0 = torch.rand(len(idx), generator=generator) < frame0_p if frame0_p else None
        total = 0.0
        for expert_name, model in experts.items():
            t = sample_timesteps(len(idx), recipe.shift, expert_range(boundary, expert_name), generator)
            noise = torch.randn(x0.shape, generator=generator)
            total = total + flow_matching_loss(
                model, x0, context, t, noise, y=None if y is None else y[idx], frame0_mask=frame0
            )
        return total

    cycles = dit_cycles(recipe, name, len(experts) > 1)
    asking = [c.checkpoint for c in cycles if c.short_p and c.steps]
    if asking and short_ids is None:  # before any training, not after hours of the earlier cycles
        raise ValueError(f"the {', '.join(asking)} cycles ask for short prompts, but no short_ids were given")
    modules: list[nn.Module] = list(experts.values()) + ([table.encoder.model] if train_text else [])
    table.encoder.model.requires_grad_(train_text)
    for cycle, (steps, lr, checkpoint, short_p) in enumerate(cycles):
        if steps:
            tc = TrainConfig(
                steps=steps,
                lr=lr,
                warmup=min(100, steps // 10),
                seed=recipe.seed + cycle,  # each cycle draws other batches than the one before
                checkpoint_every=500,
                log_every=25,
                batch_size=recipe.dit_batch,
            )
            train(modules, partial(loss_fn, short_p=short_p), tc, work / f"{checkpoint}.ckpt")
    for module in modules:
        module.eval().requires_grad_(False)


class Cycle(NamedTuple):
    """One cosine cycle of a task's DiT."""

    steps: int
    lr: float
    checkpoint: str  # file name under the work folder, without ``.ckpt``
    short_p: float  # probability that a sample's prompt leaves out its background


def dit_cycles(recipe: Recipe, name: str, two_experts: bool) -> list[Cycle]:
    """The cosine cycles of a task's DiT: the first, then one per ``dit_refine_steps`` and then per
    ``dit_prompt_steps`` entry of the task, each at half the rate of the cycle before."""
    cycles = [Cycle(recipe.dit_steps if two_experts else recipe.dense_steps, recipe.lr, name, 0.0)]
    refines = [(steps, 0.0) for task, steps in recipe.dit_refine_steps if task == name]
    refines += [(steps, recipe.short_prompt_p) for task, steps in recipe.dit_prompt_steps if task == name]
    for k, (steps, short_p) in enumerate(refines, start=1):
        cycles.append(Cycle(steps, recipe.lr / 2**k, _cycle_name(f"{name}-refine", k), short_p))
    return cycles


def _cycle_name(stage: str, k: int) -> str:
    """The checkpoint name of a stage's ``k``-th cycle (from 1): ``stage``, then ``stage2``, ``stage3``..."""
    return stage if k == 1 else f"{stage}{k}"


def _half(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}


def save_builtin(
    out: Path,
    task: str,
    experts: dict[str, WanDiT],
    vae: WanVAE,
    text: TextEncoder,
    recipe: Recipe,
    boundary: float | None,
) -> None:
    """One built-in model in the official layout, plus its sampling defaults."""
    dtype = getattr(torch, recipe.dtype_on_disk)
    out.mkdir(parents=True, exist_ok=True)
    folders = {"dense": out} if "dense" in experts else {HIGH: out / "high_noise_model", LOW: out / "low_noise_model"}
    for name, model in experts.items():
        write_folder(_half(model.state_dict(), dtype), folders[name])
        (folders[name] / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=2) + "\n")
    torch.save(_half(vae.state_dict(), dtype), out / OFFICIAL_VAES[vae.cfg.version])
    torch.save(_half(T5_KEYMAP.reverse(drop_tied(text.model.state_dict())), torch.float32), out / OFFICIAL_T5)
    text.tokenizer.save_pretrained(out / OFFICIAL_TOKENIZER)
    spec = TASKS[task]
    defaults = {
        "size": [recipe.width, recipe.height],
        "sizes": [[recipe.width, recipe.height]],
        "frames": recipe.clip_frames,
        "fps": recipe.fps,
        "steps": recipe.sample_steps,
        "shift": recipe.shift,
        "guide_scale": [recipe.guide_scale] * 2 if spec.boundary else recipe.guide_scale,
        "negative_prompt": "",
    }
    (out / DEFAULTS_FILE).write_text(json.dumps({"task": task, "defaults": defaults}, indent=2) + "\n")


def build_all(
    out: str | Path,
    work: str | Path,
    recipe: Recipe = Recipe(),
    report: Callable[[str], None] = print,
    tasks: tuple[str, ...] = tuple(BUILTIN_TASKS),
) -> dict[str, float]:
    """Train and write the built-in models of ``tasks``; returns the seconds spent per stage.

    Each task's stage trains its DiT(s) together with its own text encoder. Every stage resumes from (or reloads)
    its checkpoint under ``work``, so separate processes may train different ``tasks`` at once: each trains the
    VAE it needs, or reloads it when another process has finished it (t2v and i2v share the Wan 2.1 VAE: start the
    second once the first is past it, or both train it into the same checkpoint).
    """
    unknown = set(tasks) - set(BUILTIN_TASKS)
    if unknown:
        raise ValueError(f"unknown built-in tasks {sorted(unknown)}; choose from {sorted(BUILTIN_TASKS)}")
    out, work = Path(out), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        times[stage] = time.perf_counter() - t0
        report(f"{stage}: {times[stage]:.0f}s")
        t0 = time.perf_counter()

    clips = sample_clips(recipe.seed, recipe.clips, recipe.height, recipe.width, recipe.frames)
    videos = from_uint8(render_batch(clips, recipe.frames, recipe.height, recipe.width))
    n = recipe.clip_frames
    windows = torch.cat([videos[:, :, :n], videos[:, :, -n:]])  # the DiTs' clips: each clip's two ends
    long_prompts = prompt_corpus()
    prompts = [*long_prompts, *prompt_corpus(short=True), ""]
    prompt_index = {p: i for i, p in enumerate(prompts)}
    prompt_ids = torch.tensor([prompt_index[c.prompt] for c in clips]).repeat(2)
    short_ids = torch.tensor([prompt_index[c.short_prompt] for c in clips]).repeat(2)
    tokenizer = build_tokenizer(long_prompts, work / "tokenizer", model_type="word")
    t5_cfg = T5Config(**{**asdict(recipe.t5), "vocab_size": len(tokenizer)})
    lap("data")

    def stage(short: str, vae: WanVAE, latents: torch.Tensor, cond: torch.Tensor | None) -> None:
        spec = TASKS[BUILTIN_TASKS[short]]
        in_dim = {"t2v": vae.cfg.z_dim, "i2v": 2 * vae.cfg.z_dim + 4, "ti2v": vae.cfg.z_dim}[short]
        cfg = recipe.dit.replace(model_type=spec.model_type, in_dim=in_dim, out_dim=vae.cfg.z_dim)
        torch.manual_seed(recipe.seed + len(short))
        experts = {HIGH: WanDiT(cfg), LOW: WanDiT(cfg)} if spec.boundary else {"dense": WanDiT(cfg)}
        text = TextEncoder(tokenizer, build_umt5(t5_cfg), text_len=recipe.t5.text_len)  # each model trains its own
        table = TextTable(text, prompts, recipe.dit.text_len)
        train_dits(
            experts,
            spec.boundary,
            latents,
            prompt_ids,
            table,
            recipe,
            work,
            short,
            y=cond,
            frame0_p=0.5 if short == "ti2v" else 0.0,
            train_text=True,
            short_ids=short_ids,
        )
        save_builtin(out / short, BUILTIN_TASKS[short], experts, vae, text, recipe, spec.boundary)
        lap(short)

    if "ti2v" in tasks:
        vae22 = train_vae(recipe.vae22, videos, recipe, work)
        lap("vae2.2")
        stage("ti2v", vae22, encode_all(vae22, windows), None)
    if {"t2v", "i2v"} & set(tasks):
        vae21 = train_vae(recipe.vae21, videos, recipe, work)
        lap("vae2.1")
        lat21 = encode_all(vae21, windows)
        if "t2v" in tasks:
            stage("t2v", vae21, lat21, None)
        if "i2v" in tasks:
            k = 2 * recipe.i2v_clips
            y = torch.cat([image_condition(vae21, windows[i : min(i + 16, k)]) for i in range(0, k, 16)])
            stage("i2v", vae21, lat21[:k], y)
    return times
