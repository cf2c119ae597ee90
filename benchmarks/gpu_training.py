"""Stage 4b of ``gpu_suite.py``: a LoRA training step on one A14B expert whose frozen blocks stream from host memory
(``train-lora --offload block``) under the suite's memory cap (24 GB by default), as ``train-lora`` runs it: rank-16
factors on every block linear, the activation checkpoint per block, the flow-matching loss, AdamW on the factors.

The row's FLOPs are the model's: one forward and its backward (3 forwards' worth); the checkpoint's recomputation
(one more forward) is overhead, as in the usual model-FLOPs utilisation. The note says whether the step stayed under
the cap and what streaming the weights twice per step (forward, then the backward's recomputation) moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from gpu_stages import measure, memory_cap, random_dit, to_host

from wanflow.runtime.activation_checkpoint import checkpoint_blocks
from wanflow.runtime.host import module_tensors
from wanflow.runtime.offload import stream_blocks
from wanflow.training.flow import flow_matching_loss
from wanflow.training.lora_factors import LoraFactors, attach, target_shapes

if TYPE_CHECKING:
    from gpu_suite import Suite

RANK = 16


def streamed_expert(suite: Suite, work) -> tuple[torch.nn.Module, LoraFactors, int]:
    """One expert with random weights in (pinned) host memory, streamed, checkpointed, with LoRA factors on the
    device; and the bytes of its blocks."""
    model = random_dit(work.cfg, suite.device, suite.dtype)
    to_host(model, pin=suite.device.type == "cuda")
    nbytes = sum(t.numel() * t.element_size() for t in module_tensors(model.blocks))
    factors = LoraFactors(target_shapes(model), RANK, float(RANK)).to(suite.device)
    attach(model, factors)
    stream_blocks(model, suite.device)
    checkpoint_blocks(model)
    return model, factors, nbytes


def training_step(model, factors: LoraFactors, work, device: torch.device):
    """A closure: the loss of one batch-1 sample at a mid-range time, its backward, an AdamW step."""
    optimizer = torch.optim.AdamW(factors.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(2)
    x0 = torch.randn(1, work.cfg.in_dim, *work.latent, generator=gen, device=device)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    context = torch.randn(1, work.cfg.text_len, work.cfg.text_dim, generator=gen, device=device)
    t = torch.tensor([0.7], device=device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = flow_matching_loss(model, x0, context.to(model.text_embedding[0].weight.dtype), t, noise)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def stage_lora_training(suite: Suite) -> None:
    work = suite.workload("a14b-train")
    model, factors, nbytes = streamed_expert(suite, work)
    suite.free()
    with memory_cap(suite.device, suite.memory_budget_gb):
        run = measure(suite, training_step(model, factors, work, suite.device), suite.repeats, warmup=1, grad=True)
    loss = float(run.output)
    moved = 2 * nbytes / 1e9  # host -> device per step: the forward, then the recomputation
    cap = f"under the {suite.memory_budget_gb:g} GB cap" if suite.device.type == "cuda" else "no cap on the CPU"
    note = f"{cap}; {moved:.3g} GB streamed per step ({moved / min(run.seconds):.3g} GB/s); loss {loss:.3f}"
    what = f"{work.label}: LoRA training step (rank {RANK}, block streaming, checkpointed)"
    suite.add("4b", what, run.seconds, work.flops(forwards=3), run.peak, note=note)
