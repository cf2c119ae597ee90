"""The recipe that trains wanflow's three built-in models from scratch on the synthetic shapes dataset.

    wanflow train-builtin --out wanflow/builtin

Stages (each resumes from its checkpoint under ``--work`` if interrupted):
1. render the training clips (``wanflow.data.shapes``), held-out (colour, shape, direction) combinations excluded,
   and a word-level sentencepiece tokenizer of the prompt vocabulary;
2. the Wan 2.2 VAE (for ti2v) and the Wan 2.1 VAE (for t2v / i2v), each in two cosine cycles, then their latent
   statistics folded in, then their decoders alone with the encoders (so the latents) frozen (``builtin_vae``);
3. the DiTs with flow matching on the VAE latents of each clip's two 9-frame ends, each model with its own small
   umT5 encoder trained jointly: the dense ti2v model (half of its samples conditioned on the first frame), t2v's
   two experts (each on its own side of the boundary, as Wan 2.2 trains them), i2v's two experts; then further
   cosine cycles, each at half the rate of the one before (``dit_refine_steps``), the last ones with prompts that
   often leave out the background (``dit_prompt_steps``) (``builtin_dit``);
4. each model written in the official layout (fp16 safetensors / .pth) with its sampling defaults in
   ``wanflow.json``, so it loads through exactly the code path of the published checkpoints.

The sizes and lengths are the ``Recipe`` (``recipe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wanflow.checkpoints.save import write_defaults, write_models
from wanflow.configs import DENSE, HIGH, LOW, T5Config
from wanflow.data.shapes import render_batch, sample_clips
from wanflow.io.video import from_uint8
from wanflow.models.dit import WanDiT
from wanflow.models.text_encoder import TextEncoder, build_umt5
from wanflow.models.vae import WanVAE
from wanflow.tasks import get_task
from wanflow.training.builtin_dit import TextTable, train_dits
from wanflow.training.builtin_vae import encode_all, train_vae
from wanflow.training.flow import image_condition
from wanflow.training.recipe import BUILTIN_TASKS, Recipe, prompt_corpus
from wanflow.training.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

__all__ = ["build_all", "save_builtin"]


def save_builtin(
    out: Path,
    task: str,
    experts: dict[str, WanDiT],
    vae: WanVAE,
    text: TextEncoder,
    recipe: Recipe,
    boundary: float | None,
) -> None:
    """One built-in model in the official layout (``checkpoints.save.write_models``: the DiTs and the VAE in the
    recipe's dtype on disk, the umT5 in float32), plus its sampling defaults."""
    dtype = getattr(torch, recipe.dtype_on_disk)
    out.mkdir(parents=True, exist_ok=True)
    write_models(experts, vae, text, out, dtype=dtype, t5_dtype=torch.float32)
    defaults = {
        "size": [recipe.width, recipe.height],
        "sizes": [[recipe.width, recipe.height]],
        "frames": recipe.clip_frames,
        "fps": recipe.fps,
        "steps": recipe.sample_steps,
        "shift": recipe.shift,
        "guide_scale": [recipe.guide_scale] * 2 if boundary else recipe.guide_scale,
        "negative_prompt": "",
    }
    write_defaults(out, task, defaults)


@dataclass
class TrainingSet:
    """The rendered clips and what every DiT stage shares: its windows, the prompt table and the tokenizer."""

    videos: torch.Tensor  # (N, 3, frames, H, W) in [-1, 1]
    windows: torch.Tensor  # (2N, 3, clip_frames, H, W): each clip's first and last clip_frames frames
    prompts: list[str]  # long prompts, short ones, then the empty prompt (last)
    prompt_ids: torch.Tensor  # (2N,) index of each window's prompt
    short_ids: torch.Tensor  # (2N,) index of the same prompt without its background
    tokenizer: object


def render_training_set(recipe: Recipe, work: Path) -> TrainingSet:
    clips = sample_clips(recipe.seed, recipe.clips, recipe.height, recipe.width, recipe.frames)
    videos = from_uint8(render_batch(clips, recipe.frames, recipe.height, recipe.width))
    n = recipe.clip_frames
    long_prompts = prompt_corpus()
    prompts = [*long_prompts, *prompt_corpus(short=True), ""]
    index = {p: i for i, p in enumerate(prompts)}
    return TrainingSet(
        videos=videos,
        windows=torch.cat([videos[:, :, :n], videos[:, :, -n:]]),
        prompts=prompts,
        prompt_ids=torch.tensor([index[c.prompt] for c in clips]).repeat(2),
        short_ids=torch.tensor([index[c.short_prompt] for c in clips]).repeat(2),
        tokenizer=build_tokenizer(long_prompts, work / "tokenizer", model_type="word"),
    )


def train_task(
    short: str,
    vae: WanVAE,
    latents: torch.Tensor,
    y: torch.Tensor | None,
    data: TrainingSet,
    recipe: Recipe,
    work: Path,
) -> tuple[dict[str, WanDiT], TextEncoder]:
    """One built-in task's DiT(s), each model with its own text encoder trained jointly."""
    spec = get_task(BUILTIN_TASKS[short])
    cfg = recipe.dit.replace(model_type=spec.model_type, in_dim=spec.in_channels(vae.cfg.z_dim), out_dim=vae.cfg.z_dim)
    torch.manual_seed(recipe.seed + len(short))
    experts = {HIGH: WanDiT(cfg), LOW: WanDiT(cfg)} if spec.is_moe else {DENSE: WanDiT(cfg)}
    t5_cfg = T5Config(**{**asdict(recipe.t5), "vocab_size": len(data.tokenizer)})
    text = TextEncoder(data.tokenizer, build_umt5(t5_cfg), text_len=recipe.t5.text_len)
    table = TextTable(text, data.prompts, recipe.dit.text_len)
    frame0_p = 0.5 if spec.image == "optional" else 0.0  # ti2v: half of its samples start from the first frame
    train_dits(
        experts, spec.boundary, latents, data.prompt_ids, table, recipe, work, short,
        y=y, frame0_p=frame0_p, train_text=True, short_ids=data.short_ids,
    )  # fmt: skip
    return experts, text


class Laps:
    """Seconds per stage, reported as each ends."""

    def __init__(self, report: Callable[[str], None]):
        self.report, self.times, self.t0 = report, {}, time.perf_counter()

    def __call__(self, stage: str) -> None:
        self.times[stage] = time.perf_counter() - self.t0
        self.report(f"{stage}: {self.times[stage]:.0f}s")
        self.t0 = time.perf_counter()


def build_all(
    out: str | Path,
    work: str | Path,
    recipe: Recipe | None = None,
    report: Callable[[str], None] = print,
    tasks: tuple[str, ...] = tuple(BUILTIN_TASKS),
) -> dict[str, float]:
    """Train and write the built-in models of ``tasks``; returns the seconds spent per stage.

    Each task's stage trains its DiT(s) together with its own text encoder. Every stage resumes from (or reloads)
    its checkpoint under ``work``, so separate processes may train different ``tasks`` at once: each trains the
    VAE it needs, or reloads it when another process has finished it (t2v and i2v share the Wan 2.1 VAE: start the
    second once the first is past it, or both train it into the same checkpoint).
    """
    recipe = recipe or Recipe()
    unknown = set(tasks) - set(BUILTIN_TASKS)
    if unknown:
        raise ValueError(f"unknown built-in tasks {sorted(unknown)}; choose from {sorted(BUILTIN_TASKS)}")
    out, work = Path(out), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    lap = Laps(report)
    data = render_training_set(recipe, work)
    lap("data")

    def stage(short: str, vae: WanVAE, latents: torch.Tensor, y: torch.Tensor | None) -> None:
        experts, text = train_task(short, vae, latents, y, data, recipe, work)
        save_builtin(
            out / short, BUILTIN_TASKS[short], experts, vae, text, recipe, get_task(BUILTIN_TASKS[short]).boundary
        )
        lap(short)

    if "ti2v" in tasks:
        vae22 = train_vae(recipe.vae22, data.videos, recipe, work)
        lap("vae2.2")
        stage("ti2v", vae22, encode_all(vae22, data.windows), None)
    if {"t2v", "i2v"} & set(tasks):
        vae21 = train_vae(recipe.vae21, data.videos, recipe, work)
        lap("vae2.1")
        lat21 = encode_all(vae21, data.windows)
        if "t2v" in tasks:
            stage("t2v", vae21, lat21, None)
        if "i2v" in tasks:
            k, windows = 2 * recipe.i2v_clips, data.windows
            y = torch.cat([image_condition(vae21, windows[i : min(i + 16, k)]) for i in range(0, k, 16)])
            stage("i2v", vae21, lat21[:k], y)
    return lap.times
