"""Activation checkpointing per transformer block, for training: ``checkpoint_blocks(model)`` wraps each block of a
``WanDiT`` so that its forward keeps only its inputs, and the backward runs the block again to get the activations
back. Memory then holds one block's activations at a time instead of every block's (the blocks are 95% of them);
the price is one more forward per step.

The wrapper holds the block as its child ``block``, so parameter names gain a ``.block`` (``blocks.3.block.ffn.0``):
apply this after anything that finds modules by their official names (``training.lora_factors.attach``). Forward hooks
on the block's layers run again in the recomputation, so a LoRA beside the weights is recomputed too. Non-reentrant
checkpointing restores the RNG state for the recomputation, so a dropout would draw the same numbers twice.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointedBlock(nn.Module):
    """A block whose activations are recomputed in the backward pass."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # sampling: no activations to save
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Wrap each of ``model.blocks`` in a ``CheckpointedBlock``, in place (blocks already wrapped stay as they are);
    returns ``model``. Under ``torch.no_grad()`` the blocks run plainly."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"checkpoint_blocks needs a WanDiT (a model with .blocks), got {type(model).__name__}")
    for i, block in enumerate(blocks):
        if not isinstance(block, CheckpointedBlock):
            blocks[i] = CheckpointedBlock(block)
    return model
