"""Activation checkpointing per block: the same loss and the same LoRA gradients as without it (the LoRA hooks run
again in the recomputation), fewer saved activations, and a plain forward under no_grad."""

import torch

from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.runtime.activation_checkpoint import CheckpointedBlock, checkpoint_blocks
from wanflow.training.flow import flow_matching_loss
from wanflow.training.lora_factors import LoraFactors, attach, target_shapes


def lora_grads(checkpointed: bool):
    model = random_dit(TINY_T2V, seed=1).requires_grad_(False)
    factors = LoraFactors(target_shapes(model), rank=4, alpha=4.0, seed=0)
    with torch.no_grad():
        for up in factors.up:  # B = 0 at the start would give A no gradient
            up.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    attach(model, factors)
    if checkpointed:
        checkpoint_blocks(model)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 2, 4, 4, generator=gen), torch.randn(2, 16, 2, 4, 4, generator=gen)
    context = torch.randn(2, 5, TINY_T2V.text_dim, generator=gen)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = flow_matching_loss(model, x0, context, torch.tensor([0.9, 0.3]), noise)
    loss.backward()
    return model, loss, [p.grad for p in factors.parameters()], sum(saved)


def test_checkpointed_blocks_give_the_same_loss_and_gradients_with_fewer_saved_activations():
    plain_model, plain_loss, plain_grads, plain_saved = lora_grads(False)
    model, loss, grads, saved = lora_grads(True)
    assert all(isinstance(b, CheckpointedBlock) for b in model.blocks)
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))
    assert all(g.abs().max() > 0 for g in grads)
    assert saved < 0.5 * plain_saved, (saved, plain_saved)
    x = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(
            model(x, torch.tensor([500.0]), torch.zeros(1, 3, 32)),
            plain_model(x, torch.tensor([500.0]), torch.zeros(1, 3, 32)),
        )
    assert checkpoint_blocks(model).blocks[0] is model.blocks[0]  # a second call wraps nothing twice
