"""Sample videos during LoRA training (``--sample_prompt``): the pipeline runs the experts being trained, with their
LoRA hooks, so a sample shows the LoRA as it is at that step without copying any weights. Experts not trained in this
run (``--expert high``: the low-noise one) are loaded frozen beside them, and the VAE and the text encoder on the
first sample. Sampling draws from its own seeded generator inside a forked RNG, so training continues (and resumes)
as if no sample had been made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from wanflow.checkpoints.layouts import Layout
from wanflow.checkpoints.load import Components, load_text_encoder, load_vae
from wanflow.pipelines.pipeline import RuntimeOptions, WanPipeline
from wanflow.pipelines.progress import Progress
from wanflow.tasks import Task
from wanflow.training.lora_settings import LoraSettings


class SampleWriter:
    """``writer(step)`` writes ``PREFIX_step{step}.mp4`` with the sample prompt, at the training size and length
    and the task's sampling defaults; returns its path."""

    def __init__(
        self,
        settings: LoraSettings,
        layout: Layout,
        task: Task,
        models: dict[str, nn.Module],
        load_expert: Callable[[str], nn.Module],
    ):
        """``models``: the experts being trained; ``load_expert(name)``: a frozen expert this run does not train."""
        self.settings, self.layout, self.task, self.models = settings, layout, task, models
        self.load_expert = load_expert
        self.pipe: WanPipeline | None = None
        self.shape = (settings.size or task.size, settings.frames or task.frames)  # the training size and length

    def __call__(self, step: int) -> Path:
        pipe = self.pipe = self.pipe or self._pipeline()
        devices = [pipe.device] if pipe.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            video = pipe(
                self.settings.sample_prompt,
                size=self.shape[0],
                frames=self.shape[1],
                seed=self.settings.seed,
                progress=Progress(),
            )
        return video.save(f"{self.settings.out}_step{step:05d}.mp4")

    def _pipeline(self) -> WanPipeline:
        device = next(iter(self.models.values())).patch_embedding.weight.device
        dtype, _ = self.settings.base_dtype(device)
        experts = {
            name: self.models[name] if name in self.models else self.load_expert(name) for name in self.layout.experts
        }
        text_len = min(model.cfg.text_len for model in experts.values())
        layout, kind = self.layout, self.layout.kind
        components = Components(
            layout=layout,
            experts=experts,
            vae=load_vae(layout.require("vae"), kind),
            text_encoder=load_text_encoder(
                layout.require("text_encoder"), layout.require("tokenizer"), kind, text_len=text_len
            ),
        )
        # The training dtype and placement: the pipeline neither casts nor moves the trained experts (under "block"
        # it applies the stream again, which replaces the one training uses, with the same behaviour).
        runtime = RuntimeOptions(device=device, dtype=dtype, offload=self.settings.offload)
        return WanPipeline(components, self.task, runtime)
