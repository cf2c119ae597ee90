"""The DiT stages of the built-in recipe: flow matching of each task's experts on pre-encoded latents, with its own
small text encoder trained jointly, in cosine cycles at halving rates."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from wanflow.models.dit import WanDiT
from wanflow.models.text_encoder import TextEncoder, pad_context
from wanflow.training.flow import expert_range, flow_matching_loss, maybe_drop_context, sample_timesteps
from wanflow.training.loop import TrainConfig, train
from wanflow.training.recipe import Recipe, cycle_name, pick


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
        idx = pick(len(latents), recipe.dit_batch, generator)
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
        cycles.append(Cycle(steps, recipe.lr / 2**k, cycle_name(f"{name}-refine", k), short_p))
    return cycles
