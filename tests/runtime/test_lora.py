"""LoRA as a transform of the DiT: beside the weights == merged into them, unloading restores every weight bit for
bit, FP8 weights take an unmerged LoRA within the FP8 tolerance, strengths change in place (no recompile), and the
LoRA tensors travel with their expert under the offload policies."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from tests.tiny.dit import TINY_T2V, random_dit
from tests.tiny.lora import make_lora
from wanflow.checkpoints.lora import parse_lora
from wanflow.models.dit import FP32_MODULES
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.host import module_tensors
from wanflow.runtime.lora import (
    LoraSchedule,
    apply_lora,
    bake_lora,
    loaded_loras,
    reapply_lora,
    remove_lora,
    set_strength,
)
from wanflow.runtime.offload import ExpertPlacement, stream_blocks
from wanflow.runtime.precision import cast_model
from wanflow.sampling.hooks import Step

REL_STEP = 2.0**-4  # the e4m3 rounding step (tests/runtime/test_fp8.py)


def inputs(cfg=TINY_T2V):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=gen)
    return x, torch.tensor([700]), torch.randn(1, 7, cfg.text_dim, generator=gen)


def lora(fmt="lightx2v", seed=5):
    return parse_lora(make_lora(fmt, TINY_T2V, seed)[0], fmt)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(model, snap):
    state = model.state_dict()
    return list(state) == list(snap) and all(torch.equal(state[k], v) for k, v in snap.items())


@torch.no_grad()
def test_beside_the_weights_equals_merged_and_both_undo_bit_for_bit():
    model, x = random_dit(TINY_T2V, 1), inputs()
    snap, base = snapshot(model), model(*x)
    apply_lora(model, lora(), "l", 0.7, merge=True)
    merged = model(*x)
    assert (merged - base).abs().max() > 0.1  # the LoRA changes the velocity
    remove_lora(model, "l")
    assert same(model, snap) and torch.equal(model(*x), base)
    apply_lora(model, lora(), "l", 0.7)
    keys_while_loaded = list(model.state_dict())
    torch.testing.assert_close(model(*x), merged, rtol=1e-5, atol=1e-5)
    assert keys_while_loaded == list(snap)  # the state dict of the plain model: the factors are not in it
    remove_lora(model, "l")
    assert same(model, snap) and torch.equal(model(*x), base)
    assert not hasattr(model.blocks[0].self_attn.q, "lora") and not model.blocks[0].self_attn.q._forward_hooks


@torch.no_grad()
def test_strengths_change_in_place_and_several_loras_add_up():
    model, x = random_dit(TINY_T2V, 1), inputs()
    base = model(*x)
    apply_lora(model, lora("lightx2v"), "a", 1.0)
    apply_lora(model, lora("loha", 6), "b", 0.5)
    set_strength(model, "a", 0.0)
    set_strength(model, "b", 0.0)
    assert torch.equal(model(*x), base)  # strength 0 adds exact zeros
    set_strength(model, "a", 0.3)
    set_strength(model, "b", -0.8)
    both = model(*x)
    reference = random_dit(TINY_T2V, 1)
    apply_lora(reference, lora("lightx2v"), "a", 0.3, merge=True)
    apply_lora(reference, lora("loha", 6), "b", -0.8, merge=True)
    torch.testing.assert_close(both, reference(*x), rtol=1e-5, atol=1e-5)
    remove_lora(model, "a")
    remove_lora(reference, "a")
    torch.testing.assert_close(model(*x), reference(*x), rtol=1e-5, atol=1e-5)  # b alone on both
    assert [a.name for a in loaded_loras(model)] == ["b"]
    with pytest.raises(ValueError, match="already loaded"):
        apply_lora(model, lora(), "b")


@torch.no_grad()
def test_a_baked_lora_stays_in_the_weights_when_the_others_go():
    """diffusers' fuse-then-unload: LoRA a merged and baked, b beside and merged over it, then b unloaded: the weights
    are those of a alone merged (bit for bit), and a is no longer listed nor removable."""
    model, x = random_dit(TINY_T2V, 1), inputs()
    alone = random_dit(TINY_T2V, 1)
    apply_lora(alone, lora("wan"), "a", 0.6, merge=True)
    apply_lora(model, lora("wan"), "a", 0.6, merge=True)
    apply_lora(model, lora("loha", 6), "b", 0.5)
    apply_lora(model, lora("lightx2v", 7), "c", 0.4, merge=True)
    bake_lora(model, "a")
    assert [a.name for a in loaded_loras(model)] == ["b", "c"]
    remove_lora(model, "b")
    remove_lora(model, "c")
    assert same(model, snapshot(alone)) and torch.equal(model(*x), alone(*x))
    with pytest.raises(ValueError, match="no LoRA named 'a'"):
        remove_lora(model, "a")
    apply_lora(model, lora("loha", 6), "b", 0.5)
    with pytest.raises(ValueError, match="beside the weights, not merged"):
        bake_lora(model, "b")


@torch.no_grad()
def test_reapplied_keeps_its_place_and_merged_or_beside_gives_the_same_velocity():
    model, x = random_dit(TINY_T2V, 1), inputs()
    snap = snapshot(model)
    apply_lora(model, lora("wan"), "a", 0.6)
    apply_lora(model, lora("loha", 6), "b", 0.5)
    beside = model(*x)
    reapply_lora(model, "a", lora("wan"), 0.6, merge=True)
    assert [(a.name, a.merged) for a in loaded_loras(model)] == [("a", True), ("b", False)]
    torch.testing.assert_close(model(*x), beside, rtol=1e-5, atol=1e-5)
    reapply_lora(model, "a", lora("wan"), 0.6, merge=False)
    assert [(a.name, a.merged) for a in loaded_loras(model)] == [("a", False), ("b", False)]
    torch.testing.assert_close(model(*x), beside, rtol=0, atol=0)
    remove_lora(model, "a")
    remove_lora(model, "b")
    assert same(model, snap)


@torch.no_grad()
def test_fp8_with_an_unmerged_lora_is_within_the_fp8_tolerance_of_bf16_merged():
    x = inputs()
    bf16 = cast_model(random_dit(TINY_T2V, 2), torch.bfloat16, keep_fp32=FP32_MODULES)
    fp8 = quantize_fp8(copy.deepcopy(bf16))
    snap = snapshot(fp8)
    plain = bf16(*x)
    apply_lora(bf16, lora(), "l", 1.0, merge=True)
    want = bf16(*x)
    apply_lora(fp8, lora(), "l", 1.0)
    got = fp8(*x)
    rel = ((got - want).norm() / want.norm()).item()
    effect = ((want - plain).norm() / want.norm()).item()
    assert rel < REL_STEP and effect > 5 * rel, (rel, effect)  # an FP8 rounding error, far below the LoRA's effect
    remove_lora(fp8, "l")
    assert same(fp8, snap)  # e4m3 values and scales unchanged
    apply_lora(fp8, lora(), "m", 1.0, merge=True)  # merged into FP8: dequantised, summed, quantised again
    assert ((fp8(*x) - want).norm() / want.norm()).item() < REL_STEP
    remove_lora(fp8, "m")
    assert same(fp8, snap)


@torch.no_grad()
def test_merged_without_originals_cannot_be_undone_but_stays_under_an_unmerged_lora():
    model, x = random_dit(TINY_T2V, 1), inputs()
    apply_lora(model, lora("lightx2v", 5), "beside", 1.0)  # rebuilds biases and modulation from kept originals
    apply_lora(model, lora("lightx2v", 6), "l", 1.0, merge=True, keep_originals=False)
    with pytest.raises(ValueError, match="without keeping the original weights"):
        remove_lora(model, "l")
    with pytest.raises(ValueError, match="without keeping the original weights"):
        set_strength(model, "l", 0.5)
    set_strength(model, "beside", 0.5)  # rebuilt from the originals, which now hold the merged LoRA
    reference = random_dit(TINY_T2V, 1)
    apply_lora(reference, lora("lightx2v", 5), "beside", 0.5, merge=True)
    apply_lora(reference, lora("lightx2v", 6), "l", 1.0, merge=True)
    torch.testing.assert_close(model(*x), reference(*x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_per_step_strengths_and_their_restore():
    model, x = random_dit(TINY_T2V, 1), inputs()
    apply_lora(model, lora(), "l", 1.0)
    at = {}
    for s in (0.25, 1.0):
        set_strength(model, "l", s)
        at[s] = model(*x)
    schedule = LoraSchedule({"l": [0.25, 0.25, 1.0]})
    outs = []
    for i in range(4):
        schedule.before(Step(i, 4, 900 - 100 * i, "high", 1.0), model)
        outs.append(model(*x))
    schedule.end()
    assert torch.equal(outs[0], at[0.25]) and torch.equal(outs[1], at[0.25])
    assert torch.equal(outs[2], at[1.0]) and torch.equal(outs[3], at[1.0])  # the last value holds
    set_strength(model, "l", 1.0)
    assert loaded_loras(model)[0].strength == 1.0
    apply_lora(model, lora(), "m", 1.0, merge=True)
    with pytest.raises(ValueError, match="beside the weights"):
        LoraSchedule({"m": [0.5]}).before(Step(0, 1, 900, "high", 1.0), model)


@torch.no_grad()
def test_compiled_blocks_take_a_new_strength_without_recompiling():
    torch._dynamo.reset()
    model, x = random_dit(TINY_T2V, 3), inputs()
    apply_lora(model, lora(), "l", 0.5)
    eager = model(*x)
    set_strength(model, "l", 1.0)
    eager_full = model(*x)
    set_strength(model, "l", 0.5)
    compile_blocks(model, backend="aot_eager", fullgraph=True)
    counters.clear()
    torch.testing.assert_close(model(*x), eager, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # both blocks (with their LoRA terms) share one graph
    set_strength(model, "l", 1.0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(model(*x), eager_full, rtol=1e-5, atol=1e-5)


def lora_buffers(model):
    return [b for name, b in model.named_buffers() if ".lora." in f".{name}"]


@torch.no_grad()
def test_lora_tensors_travel_with_their_expert():
    model = random_dit(TINY_T2V, 1)
    apply_lora(model, lora(), "l", 1.0)
    assert len(lora_buffers(model)) == 2 * 2 * 10 + 1  # down and up of 10 linears in 2 blocks, the head's delta
    moved = {id(t) for t in module_tensors(model)}  # what the policies move (``_to``), pin and restore
    assert all(id(b) in moved for b in lora_buffers(model))
    model = random_dit(TINY_T2V, 1)
    apply_lora(model, lora(), "l", 1.0)
    placement = ExpertPlacement({"high": model}, "cpu", "model")
    held = {id(t) for t, _ in placement.host["high"]}
    assert all(id(b) in held for b in lora_buffers(model))  # restored to their host copies with the weights
    stream_blocks(model, torch.device("cpu"))
    stream_blocks(model, torch.device("cpu"))  # re-applied after a transform: hooks replaced, not stacked
    assert len(model.blocks[0]._forward_pre_hooks) == 1 and len(model.blocks[0]._forward_hooks) == 1
