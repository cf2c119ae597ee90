"""Block streaming (``runtime.block_stream``) in training and sampling: the gradients of a LoRA beside streamed blocks
equal those beside resident ones, no operation ever computes on a host copy (the device copies are distinct tensors
even on the CPU, so a dispatch mode sees which one an operation reads), at most two blocks are on the device at once,
and the backward pass brings each block in again for its recomputation, prefetching downwards."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.runtime.activation_checkpoint import checkpoint_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.offload import ExpertPlacement, stream_blocks
from wanflow.training.flow import flow_matching_loss
from wanflow.training.lora_factors import LoraFactors, attach, target_shapes

CFG = TINY_T2V.replace(num_layers=4)


class HostReads(TorchDispatchMode):
    """Records every operation that reads a host copy, but the stream's own copying (``empty_like``, ``copy_``), and
    the most blocks on the device at any operation."""

    COPYING = (torch.ops.aten.empty_like.default, torch.ops.aten.copy_.default)

    def __init__(self, stream):
        super().__init__()
        self.stream, self.reads, self.most = stream, [], 0
        self.host = {host.untyped_storage().data_ptr() for pairs in stream.host for _, host in pairs}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.COPYING:
            return func(*args, **(kwargs or {}))
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if any(t.untyped_storage().data_ptr() in self.host for t in tensors if t.numel()):
            self.reads.append(str(func))
        self.most = max(self.most, len(self.stream.resident))
        return func(*args, **(kwargs or {}))


def lora_model(stream: bool, checkpoint: bool = True, fp8: bool = False, stream_last: bool = False):
    model = random_dit(CFG, 4).requires_grad_(False)
    if fp8:
        model = quantize_fp8(model.to(torch.bfloat16))
    factors = LoraFactors(target_shapes(model), rank=2, alpha=2.0, seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for up in factors.up:
            up.normal_(
                0, 0.1, generator=gen
            )  # non-zero, so the gradient reaches the down factors and the blocks' inputs
    attach(model, factors)
    if stream and not stream_last:
        stream_blocks(model, torch.device("cpu"))
    if checkpoint:
        checkpoint_blocks(model)
    if stream and stream_last:  # onto the checkpoint's wrappers (as a sampling pipeline applies it again)
        stream_blocks(model, torch.device("cpu"))
    return model, factors


def step_gradients(model, factors, mode=None):
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 16, 2, 4, 4, generator=gen), torch.randn(2, 16, 2, 4, 4, generator=gen)
    context, t = torch.randn(2, 7, 32, generator=gen), torch.tensor([0.3, 0.8])
    factors.zero_grad()
    if mode is None:
        flow_matching_loss(model, x0, context, t, noise).backward()
    else:
        with mode:
            flow_matching_loss(model, x0, context, t, noise).backward()
    return [p.grad.clone() for p in factors.parameters()]


@pytest.mark.parametrize("fp8, stream_last", [(False, False), (True, False), (False, True)])
def test_a_lora_beside_streamed_blocks_gets_the_gradients_of_resident_ones(fp8, stream_last):
    want = step_gradients(*lora_model(stream=False, fp8=fp8))
    model, factors = lora_model(stream=True, fp8=fp8, stream_last=stream_last)
    watch = HostReads(model.block_stream)
    for _ in range(2):  # the second step starts with the blocks where the first left them
        got = step_gradients(model, factors, watch)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert all(g.abs().max() > 0 for g in want)
    assert watch.reads == [] and watch.most == 2


def test_without_the_checkpoint_the_backward_pass_would_read_host_copies():
    """Why ``train-lora --offload block`` needs gradient checkpointing: autograd keeps the parameters themselves,
    which point at the host copies once their block is sent back (a GPU would fail on the device mismatch)."""
    model, factors = lora_model(stream=True, checkpoint=False)
    watch = HostReads(model.block_stream)
    step_gradients(model, factors, watch)
    assert "aten.native_layer_norm_backward.default" in watch.reads  # the backward of a block's norm, for one


def test_the_backward_pass_brings_each_block_in_again_from_the_last_prefetching_the_one_below(monkeypatch):
    model, factors = lora_model(stream=True)
    stream = model.block_stream
    events, copy_in = [], stream._copy_in
    monkeypatch.setattr(stream, "bring", lambda i, bring=stream.bring: events.append(("run", i)) or bring(i))
    monkeypatch.setattr(stream, "_copy_in", lambda i, s=None: events.append(("copy", i)) or copy_in(i, s))
    for index, block in enumerate(stream.blocks):  # the hooks call the bound method they were made with: re-register
        block._forward_pre_hooks.clear()
        block.register_forward_pre_hook(lambda m, args, i=index: stream.bring(i))
    step_gradients(model, factors)
    forward = [("run", 0), ("copy", 0), ("copy", 1), ("run", 1), ("copy", 2), ("run", 2), ("copy", 3), ("run", 3)]
    backward = [("run", 3), ("copy", 3), ("copy", 2), ("run", 2), ("copy", 1), ("run", 1), ("copy", 0), ("run", 0)]
    assert events[:8] == forward and events[8:16] == backward
    assert events[16:] == [("copy", 1)]  # block 0 starts the next forward: block 1 is already on its way


@torch.no_grad()
def test_sampling_streams_without_host_reads_and_leaves_no_block_on_the_device():
    model = random_dit(CFG, 5)
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 32)
    want = model(x, t, ctx)
    placement = ExpertPlacement({"dense": model}, "cpu", "block")
    watch = HostReads(model.block_stream)
    with watch:
        got = placement("dense")(x, t, ctx)
    assert torch.equal(got, want) and watch.reads == [] and watch.most == 2
    placement.end()
    assert model.block_stream.resident == set() and model.block_stream.prefetched is None
    for block, pairs in zip(model.blocks, model.block_stream.host, strict=True):  # every tensor at its host copy
        assert [t.data_ptr() for t, _ in pairs] == [host.data_ptr() for _, host in pairs]
        assert len(pairs) == len(list(block.parameters())) + len(list(block.buffers()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streamed_training_matches_resident_with_a_fraction_of_the_weights_on_the_device():
    cfg = TINY_T2V.replace(dim=256, ffn_dim=1024, num_heads=4, num_layers=8)

    def run(stream: bool):
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model = random_dit(cfg, 4).requires_grad_(False)  # built on the host
        factors = LoraFactors(target_shapes(model), rank=2, alpha=2.0, seed=1)
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for up in factors.up:
                up.copy_(torch.randn(up.shape, generator=gen) * 0.1)
        factors.cuda()
        attach(model, factors)
        if stream:
            stream_blocks(model, torch.device("cuda"))
        else:
            model.cuda()
        checkpoint_blocks(model)
        gen = torch.Generator().manual_seed(3)
        x0, noise = (torch.randn(1, 16, 2, 4, 4, generator=gen).cuda() for _ in range(2))
        context, t = torch.randn(1, 7, 32, generator=gen).cuda(), torch.tensor([0.6], device="cuda")
        flow_matching_loss(model, x0, context, t, noise).backward()
        torch.cuda.synchronize()
        grads = [p.grad.cpu() for p in factors.parameters()]
        host = getattr(model, "block_stream", None)
        return grads, torch.cuda.max_memory_allocated() - start, host

    torch.use_deterministic_algorithms(False)  # attention's CUDA backward has no deterministic kernel
    try:
        want, resident_peak, _ = run(stream=False)
        got, streamed_peak, stream = run(stream=True)
    finally:
        torch.use_deterministic_algorithms(True)  # as tests/conftest.py sets it
    assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want, strict=True))
    assert all(t.device.type == "cpu" and t.is_pinned() for pairs in stream.host for _, t in pairs)
    block_bytes = sum(t.numel() * t.element_size() for _, t in stream.host[0])
    # resident: all 8 blocks on the device; streamed: the one running, the next, and the recomputation's copies
    assert streamed_peak < resident_peak - 4 * block_bytes, (streamed_peak, resident_peak, block_bytes)


@torch.no_grad()
def test_another_policy_after_block_streaming_takes_the_hooks_off():
    model = random_dit(CFG, 6)
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 32)
    want = model(x, t, ctx)
    ExpertPlacement({"dense": model}, "cpu", "block")("dense")(x, t, ctx)
    for policy in ("resident", "model"):
        placement = ExpertPlacement({"dense": model}, "cpu", policy)
        assert not hasattr(model, "block_stream")
        assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)
        assert torch.equal(placement("dense")(x, t, ctx), want)
        ExpertPlacement({"dense": model}, "cpu", "block")
