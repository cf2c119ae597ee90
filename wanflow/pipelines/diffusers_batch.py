"""diffusers' batch (a list of prompts, ``num_videos_per_prompt``, a generator per video or one for all): one call per
video in diffusers' order, with the noise diffusers draws, and the frames stacked as diffusers returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wanflow.pipelines.diffusers_api import WanPipelineOutput
from wanflow.sampling.noise import draw_seed, initial_noise


@dataclass(frozen=True)
class BatchNoise:
    """Video ``index`` of a diffusers batch of ``count`` drawn from one generator: diffusers draws the whole batch's
    noise at once, one ``randn`` of (count, *shape), so this video's is that draw's row ``index``."""

    seed: int
    index: int
    count: int
    on: str | None = None  # "cpu": the generator is a CPU one, whose noise diffusers draws on the CPU

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return initial_noise((self.count, *shape), self.seed, device, self.on)[0][self.index : self.index + 1]


def batch_calls(
    prompt: Any, options: dict[str, Any], latents: Any, embeds: tuple[Any, Any] = (None, None)
) -> list[tuple[str | None, dict[str, Any]]] | None:
    """diffusers' batch (a list of prompts or ``prompt_embeds`` of several rows, ``num_videos_per_prompt``, a list of
    generators, batched ``latents``) as one call per video, in diffusers' order (each prompt's videos together) and
    with diffusers' noise; None for one video."""
    per_prompt = options.get("num_videos_per_prompt") or 1
    generator = options.get("generator")
    rows = embedded_prompts(prompt, embeds)
    if not isinstance(prompt, list) and rows is None and per_prompt == 1 and not isinstance(generator, list):
        return None
    prompts = prompt if isinstance(prompt, list) else [prompt] * (rows or 1)
    negative = options.get("negative_prompt")
    negatives = negative if isinstance(negative, list) else [negative] * len(prompts)
    if len(negatives) != len(prompts) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(negatives)} negative prompts: give one per prompt")
    if not isinstance(per_prompt, int) or isinstance(per_prompt, bool) or per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be a positive integer, got {per_prompt!r}")
    count = len(prompts) * per_prompt
    if isinstance(generator, list) and len(generator) != count:
        raise ValueError(f"{len(generator)} generators for a batch of {count} videos: give one per video, or one")
    if latents is not None and (not isinstance(latents, torch.Tensor) or latents.shape[0] != count):
        raise ValueError(f"latents for a batch of {count} videos: a tensor of {count} rows (one per video)")
    seed = None if isinstance(generator, list) else generator.initial_seed() if generator is not None else draw_seed(-1)
    on = "cpu" if isinstance(generator, torch.Generator) and generator.device.type == "cpu" else None
    calls = []
    for k in range(count):
        item = {**options, "num_videos_per_prompt": None, "negative_prompt": negatives[k // per_prompt]}
        if rows is not None:  # (each prompt's row of the states given)
            row = [None if e is None else e[k // per_prompt][None] for e in embeds]
            item.update(prompt_embeds=row[0], negative_prompt_embeds=row[1])
        if isinstance(generator, list):
            item["generator"] = generator[k]
        else:
            item.update(generator=None, seed=seed)
        item["latents"] = (
            latents[k : k + 1] if latents is not None else None if seed is None else BatchNoise(seed, k, count, on)
        )
        calls.append((prompts[k // per_prompt], item))
    return calls


def embedded_prompts(prompt: Any, embeds: tuple[Any, Any]) -> int | None:
    """The prompts of ``prompt_embeds`` given as a (B, L, D) batch of several rows (``negative_prompt_embeds`` as
    many, or none), in place of the prompts; None otherwise (one row: one prompt's, checked by the call)."""
    given, negative = embeds
    if not isinstance(given, torch.Tensor) or given.ndim != 3 or given.shape[0] < 2:
        return None
    if prompt is not None:
        raise ValueError("pass a prompt or prompt_embeds, not both")
    if negative is not None and (not isinstance(negative, torch.Tensor) or negative.shape[:1] != given.shape[:1]):
        raise ValueError(f"negative_prompt_embeds: one row per prompt_embeds row ({given.shape[0]}), as diffusers")
    return given.shape[0]


def batch_output(frames: list[Any], output_type: str, return_dict: bool, seed: int | None) -> Any:
    """The frames of a batch's videos, one call each, as diffusers returns the batch."""
    if output_type == "pil":
        batch = [video for out in frames for video in out]
    elif output_type == "np":
        batch = np.concatenate(frames)
    else:
        batch = torch.cat(frames)
    return WanPipelineOutput(batch, seed) if return_dict else (batch,)
