"""``wanflow train-lora``: a LoRA fine-tuned on a folder of captioned clips, beside a frozen Wan DiT.

The objective is the built-in models' (``training.flow``): ``x_t = (1 - t) x0 + t eps``, the DiT predicts
``v = eps - x0``, t drawn with the checkpoint's shift; an A14B expert sees only its own range (high: t >= boundary,
low: below), and ``--expert both`` trains both in one run, each step one sample per expert. TI2V-5B conditions half
of its samples on their clean first latent frame, as its built-in model trains, so the LoRA serves T2V and I2V.
The clips' latents and text states are cached beside the data (``lora_cache``): training holds only the DiT(s),
frozen in float32, bfloat16 or FP8, on the device or streamed block by block from host memory (``--offload block``),
with the trainable factors outside them (``lora_factors``) and optimiser state for those alone. The generic loop
(``training.loop``) resumes bit for bit; the LoRA files are rewritten (atomically) with every checkpoint, so an
interrupted run leaves the last checkpoint's LoRA usable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from wanflow.checkpoints.layouts import Layout
from wanflow.checkpoints.load import dit_config, load_dit
from wanflow.checkpoints.lora_save import save_lora
from wanflow.models.text_encoder import pad_context
from wanflow.runtime.activation_checkpoint import checkpoint_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.offload import stream_blocks
from wanflow.tasks import Task
from wanflow.training.flow import expert_range, flow_matching_loss, sample_timesteps
from wanflow.training.loop import History, TrainConfig, load_checkpoint, resolve_device, train
from wanflow.training.lora_cache import Encoders, item_latents, text_states, uncached
from wanflow.training.lora_data import (
    ClipShape,
    DataError,
    Item,
    find_items,
    problems_error,
    read_problems,
    scan_folder,
)
from wanflow.training.lora_factors import LoraFactors, attach, base_velocity, target_shapes
from wanflow.training.lora_meta import lora_metadata
from wanflow.training.lora_preserve import swapped_samples
from wanflow.training.lora_settings import LoraSettings, chosen_experts, output_paths, resolve_checkpoint

log = logging.getLogger(__name__)

TI2V_FRAME0_P = 0.5  # share of TI2V samples conditioned on their first latent frame
PRIOR_STREAM = 0x9710  # tells the prior batches' seeds apart from any other use of (seed, step)


class Sample(NamedTuple):
    """One training window, encoded."""

    latents: torch.Tensor  # (C, T, H, W)
    context: torch.Tensor  # (L, text_dim), unpadded
    y: torch.Tensor | None  # I2V: (4 + C, T, H, W)


def clip_shape(settings: LoraSettings, task: Task) -> ClipShape:
    width, height = settings.size or task.size
    step = task.size_multiple
    if width % step or height % step:
        raise ValueError(f"the training size {width}x{height} must be a multiple of {step} for {task.name}")
    return ClipShape(width, height, settings.frames or task.frames, settings.windows)


def load_samples(settings: LoraSettings, layout: Layout, task: Task, text_len: int, device: torch.device) -> list:
    """Every window of every clip of the data folder, encoded (from the cache where it holds them)."""
    return load_data(settings, layout, task, text_len, device)[0]


def load_data(
    settings: LoraSettings, layout: Layout, task: Task, text_len: int, device: torch.device
) -> tuple[list[Sample], list[Sample]]:
    """The samples of the data folder and the prior samples, encoded: those of the prior folder, or with
    ``preserve_word`` the data folder's clips under their captions with the word swapped (``lora_preserve``), else
    none. One ``DataError`` names every bad file of both folders, so both are fixed in one pass."""
    folders = [Path(f).expanduser() for f in (settings.data, settings.prior_data) if f is not None]
    shape = clip_shape(settings, task)
    encoders = Encoders(layout, device, text_len)
    found = [usable_items(folder, shape, encoders, task.image_channels) for folder in folders]
    errors = [error for _, error in found if error is not None]
    if errors:
        raise DataError("\n".join(str(e) for e in errors))
    i2v = task.image_channels
    groups = [
        [encode_item(f, item, shape, encoders, i2v, device) for item in items]
        for f, (items, _) in zip(folders, found, strict=True)
    ]
    for folder, (items, _), group in zip(folders, found, groups, strict=True):
        log.info("%d samples from %d files in %s", sum(map(len, group)), len(items), folder)
    prior = [s for group in groups[1:] for samples in group for s in samples]
    if settings.preserve_word is not None:
        prior = swapped_samples(folders[0], found[0][0], groups[0], settings.preserve_word, encoders)
    encoders.free()
    return [s for samples in groups[0] for s in samples], prior


def usable_items(folder: Path, shape: ClipShape, encoders: Encoders, i2v: bool) -> tuple[list[Item], DataError | None]:
    """The folder's captioned clips, and the error naming each file that cannot be used (None if all can)."""
    items, problems, total = find_items(folder)
    problems += read_problems(uncached(folder, items, shape, encoders, i2v), shape)  # all of them, in one error
    return items, problems_error(folder, problems, total) if problems else None


def encode_item(
    folder: Path, item: Item, shape: ClipShape, encoders: Encoders, i2v: bool, device: torch.device
) -> list[Sample]:
    """Every window of ``item`` as a ``Sample`` on ``device``."""
    encoded = item_latents(folder, item, shape, encoders, i2v)
    context = text_states(folder, item.caption, encoders).to(device)
    ys = [y.to(device) for y in encoded["y"]] if i2v else [None] * len(encoded["latents"])
    return [Sample(latents.to(device), context, y) for latents, y in zip(encoded["latents"], ys, strict=True)]


def load_base(layout: Layout, expert: str, settings: LoraSettings, device: torch.device) -> nn.Module:
    """One frozen expert in the base dtype (FP8 block linears if asked), on ``device``; with ``offload="block"`` its
    blocks stay in host memory and stream to ``device`` around each forward."""
    dtype, fp8 = settings.base_dtype(device)
    model = load_dit(layout.experts[expert], layout.kind, dtype)
    if fp8:
        quantize_fp8(model)
    model.requires_grad_(False)
    if settings.offload == "block":
        stream_blocks(model, device)
        return model
    return model.to(device)


def batches(samples: list[Sample], size: int, generator: torch.Generator) -> list[Sample]:
    """``size`` samples of one latent shape (videos and images do not mix): a random first one, then its kind."""
    first = samples[int(torch.randint(len(samples), (1,), generator=generator))]
    kind = [s for s in samples if s.latents.shape == first.latents.shape]
    return [first] + [kind[int(i)] for i in torch.randint(len(kind), (size - 1,), generator=generator)]


def make_loss(
    models: dict[str, nn.Module],
    samples: list[Sample],
    task: Task,
    settings: LoraSettings,
    text_len: int,
    prior: list[Sample],
    factors: nn.ModuleDict,
):
    """``loss_fn(step, generator)`` of the loop: flow matching of each trained expert on its range, plus, with prior
    samples, ``prior_weight`` times the loss on a batch of as many prior samples: against their flow-matching target
    (DreamBooth's prior preservation) or, with ``prior_target="base"``, against the frozen base's prediction (each
    expert's own, its ``factors`` switched off). The prior batch draws from its own generator, seeded by the step: the
    main batches are those of a run without prior data, and a resumed run draws the same prior batches."""
    teachers = None
    if settings.target == "base":
        teachers = {name: base_velocity(model, factors[name]) for name, model in models.items()}

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        total = batch_loss(models, batches(samples, settings.batch_size, generator), task, text_len, generator)
        if prior and settings.prior_weight:  # a weight of 0 is the run without prior data: nothing to compute
            draw = prior_generator(settings.seed, step, generator.device)
            prior_batch = batches(prior, settings.batch_size, draw)
            prior_loss = batch_loss(models, prior_batch, task, text_len, draw, teachers)
            total = total + settings.prior_weight * prior_loss
        return total

    return loss_fn


def prior_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of step ``step``'s prior batch: a function of the run's seed and the step alone."""
    state = np.random.SeedSequence([seed, step, PRIOR_STREAM]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def batch_loss(
    models: dict[str, nn.Module],
    batch: list[Sample],
    task: Task,
    text_len: int,
    generator: torch.Generator,
    teachers: dict[str, Callable] | None = None,
) -> torch.Tensor:
    """The batch's flow-matching loss, summed over the trained experts, each at times of its own range; with
    ``teachers`` (expert -> velocity) against their predictions instead of ``eps - x0``."""
    x0 = torch.stack([s.latents for s in batch])
    context = pad_context([s.context for s in batch], text_len)
    y = torch.stack([s.y for s in batch]) if task.image_channels else None
    frame0 = None
    if task.expand_timesteps:
        frame0 = torch.rand(len(batch), generator=generator, device=generator.device) < TI2V_FRAME0_P
    total = 0.0
    for name, model in models.items():
        t = sample_timesteps(len(batch), task.shift, expert_range(task.boundary, name), generator)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device)
        teacher = teachers[name] if teachers else None
        total = total + flow_matching_loss(model, x0, context, t, noise, y=y, frame0_mask=frame0, teacher=teacher)
    return total


def new_factors(models: dict[str, nn.Module], settings: LoraSettings) -> nn.ModuleDict:
    """Fresh factors per expert (each its own seed), hooked onto its linears; then the blocks checkpointed."""
    factors = nn.ModuleDict()
    for i, (name, model) in enumerate(models.items()):
        factors[name] = LoraFactors(
            target_shapes(model, settings.targets), settings.rank, settings.lora_alpha, seed=settings.seed + i
        )
        attach(model, factors[name])
        if settings.gradient_checkpointing:
            checkpoint_blocks(model)  # after attach: it renames the blocks' children
    return factors


def check_resume(settings: LoraSettings, factors: nn.ModuleDict) -> None:
    """``--resume`` needs the checkpoint, a fresh run needs its absence, and the shapes must match this run's."""
    path = settings.checkpoint_path
    if not settings.resume:
        if path.exists():
            raise ValueError(f"{path} exists: pass --resume to continue that run, or choose another --out")
        return
    if not path.exists():
        raise ValueError(f"--resume: no checkpoint {path} to continue (a run writes it every checkpoint_every steps)")
    saved = load_checkpoint(path)["model"]
    mine = factors.state_dict()
    if set(saved) != set(mine) or any(saved[k].shape != v.shape for k, v in mine.items()):
        raise ValueError(f"{path} was written by a run with other experts or another rank; resume it with those")


def write_loras(factors: nn.ModuleDict, paths: dict[str, Path], metadata: dict[str, str]) -> None:
    for name, path in paths.items():
        save_lora(factors[name].export(), path, {**metadata, "wanflow_expert": name})


def train_lora(settings: LoraSettings, progress: bool = True) -> tuple[dict[str, Path], History]:
    """Train, write the LoRA file(s), return their paths and the loss history."""
    layout, task = resolve_checkpoint(settings)
    device = resolve_device(settings.device)
    experts = chosen_experts(task, settings.expert)
    text_len = min(dit_config(layout.experts[e], layout.kind).text_len for e in experts)
    samples, prior = load_data(settings, layout, task, text_len, device)
    models = {name: load_base(layout, name, settings, device) for name in experts}
    factors = new_factors(models, settings)
    check_resume(settings, factors)
    paths = output_paths(settings.out, task, experts)
    metadata = lora_metadata(settings, task, samples_captions(settings))
    config = TrainConfig(
        steps=settings.steps,
        lr=settings.lr,
        weight_decay=0.0,  # the factors start at zero (up) and should not be pulled back to it
        seed=settings.seed,
        checkpoint_every=settings.checkpoint_every,
        device=str(device),
        batch_size=settings.batch_size,
    )
    sampler = sample_writer(settings, layout, task, models, device) if settings.sample_prompt else None

    def on_step(step: int, history: History) -> None:
        if (settings.checkpoint_every and step % settings.checkpoint_every == 0) or step == settings.steps:
            write_loras(factors, paths, {**metadata, "wanflow_steps": str(step)})
            if sampler is not None:
                sampler(step)

    loss_fn = make_loss(models, samples, task, settings, text_len, prior, factors)
    history = train(factors, loss_fn, config, settings.checkpoint_path, progress, on_step)
    if not all(path.is_file() for path in paths.values()):  # a resumed run that had already finished
        write_loras(factors, paths, {**metadata, "wanflow_steps": str(len(history.losses))})
    return paths, history


def samples_captions(settings: LoraSettings) -> list[str]:
    return [item.caption for item in scan_folder(Path(settings.data).expanduser())]


def sample_writer(
    settings: LoraSettings, layout: Layout, task: Task, models: dict[str, nn.Module], device: torch.device
):
    from wanflow.training.lora_sample import SampleWriter  # (the pipeline stack, only when samples are asked for)

    return SampleWriter(settings, layout, task, models, lambda name: load_base(layout, name, settings, device))
