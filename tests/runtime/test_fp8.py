"""FP8 weight storage: the e4m3 rounding bound per output channel, the DiT against its float self, memory, offload."""

import copy

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.fp8 import E4M3, block_linears, dequantize, parameter_bytes, quantize, quantize_fp8

# e4m3 keeps 3 mantissa bits: round to nearest moves a normal value by at most half a step, 2^-4 of the value.
# Below 2^-6 (subnormals) the step is 2^-9, so the absolute error is at most 2^-10 (times the row scale).
REL_STEP, SUBNORMAL_STEP = 2.0**-4, 2.0**-10


def rows_of_every_magnitude(seed: int = 0) -> torch.Tensor:
    """(9, 64) weights, row i of size ~10^(i-4), and one all-zero row: a per-tensor scale would flush the small rows."""
    w = torch.randn(9, 64, generator=torch.Generator().manual_seed(seed))
    w = w * torch.logspace(-4, 4, 9)[:, None]
    w[4] = 0.0
    return w


def test_per_channel_scales_bound_the_error_by_the_e4m3_step():
    w = rows_of_every_magnitude()
    values, scale = quantize(w)
    assert values.dtype == E4M3 and scale.dtype == torch.float32
    amax = w.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(scale, torch.where(amax > 0, amax / 448, 1.0), rtol=0, atol=0)
    back = dequantize(values, scale)
    bound = torch.maximum(REL_STEP * w.abs(), SUBNORMAL_STEP * scale) * (1 + 1e-6)  # (+ float32 rounding)
    assert ((back - w).abs() <= bound).all()
    assert ((back - w).abs() / bound).max() > 0.5  # the bound is the real step, not a loose one
    largest = w.abs().argmax(dim=1)
    rows = torch.arange(len(w))
    torch.testing.assert_close(back[rows, largest], w[rows, largest])  # amax maps to +-448, exact in e4m3
    assert torch.equal(back[4], torch.zeros(64))  # the zero row: no NaN from a zero scale


def test_bfloat16_weights_keep_bfloat16_scales_and_results():
    w = rows_of_every_magnitude(1).bfloat16()
    values, scale = quantize(w)
    back = dequantize(values, scale)
    assert scale.dtype == back.dtype == torch.bfloat16
    # plus the bfloat16 roundings of the scale and of the product, 2^-9 each
    err = (back.float() - w.float()).abs()
    assert (err <= torch.maximum((REL_STEP + 2**-8) * w.float().abs(), SUBNORMAL_STEP * scale.float())).all()


def test_a_float32_weight_is_rounded_once_to_lower_scales():
    """A float32 weight (a LoRA summed into fp8 weights) with bfloat16 scales: e4m3 from the float32 values, not from
    a bfloat16 copy first; with the same scales (rows whose amax is 1) each value is at least as near, some nearer."""
    w = (torch.randn(16, 64, generator=torch.Generator().manual_seed(3)) * 0.3).clamp(-0.99, 0.99)
    w[:, 0] = 1.0  # (each row's amax exactly representable: the same scale either way)
    once, twice = quantize(w, torch.bfloat16), quantize(w.to(torch.bfloat16))
    assert once[1].dtype == torch.bfloat16 and torch.equal(once[1], twice[1])
    err_once = (once[0].float() * once[1].float() - w).abs()  # (the exact products: no bfloat16 rounding of them)
    err_twice = (twice[0].float() * twice[1].float() - w).abs()
    assert (err_once <= err_twice).all() and (err_once < err_twice).any()
    bf16 = w.to(torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(quantize(bf16.float(), torch.bfloat16), quantize(bf16), strict=True))


def test_quantized_dit_is_the_float_dit_with_rounded_weights():
    model = random_dit(TINY_T2V, 3)
    x = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.tensor([500]), torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    want = model(x, t, ctx)
    before = parameter_bytes(model)
    linears = block_linears(model)
    # float32 weight (4 bytes) -> e4m3 (1 byte) + one float32 scale per output row
    saved = sum(m.weight.numel() * 3 - m.out_features * 4 for m in linears)
    rounded = copy.deepcopy(model)
    for m in block_linears(rounded):
        m.weight.data = dequantize(*quantize(m.weight))
    text_weight = model.text_embedding[0].weight.detach().clone()

    quantize_fp8(model)
    stored = [m.parametrizations.weight.original0 for m in linears]
    assert len(linears) == 2 * 8 + 2 * 2 and all(v.dtype == E4M3 for v in stored)  # q/k/v/o x2 + FFN, per block
    assert torch.equal(model.text_embedding[0].weight, text_weight)  # embeddings and head untouched
    assert parameter_bytes(model) == before - saved
    got = model(x, t, ctx)
    torch.testing.assert_close(got, rounded(x, t, ctx), rtol=1e-5, atol=1e-6)  # the forward uses values * scale
    # Every weight moved by at most 2^-4 of itself; independent roundings partly cancel, so the velocity's relative
    # error stays below that step (measured 0.015 here) while being clearly non-zero.
    rel = ((got - want).norm() / want.norm()).item()
    assert 1e-3 < rel < REL_STEP


def test_second_call_changes_nothing_and_float16_is_refused():
    model = quantize_fp8(random_dit(TINY_T2V, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_fp8(model)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v.float(), model.state_dict()[k].float()) for k, v in state.items())
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        quantize_fp8(random_dit(TINY_T2V, 4).half())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


def test_fp8_pipeline_under_every_offload_policy(ckpt):
    kw = dict(size=(64, 64), frames=5, steps=3, seed=9)
    full = WanPipeline.from_pretrained(ckpt, offload="resident")("a green square", **kw).frames
    videos = {
        policy: WanPipeline.from_pretrained(ckpt, offload=policy, fp8=True)("a green square", **kw).frames
        for policy in ("resident", "model", "block")
    }
    assert torch.equal(videos["resident"], videos["model"]) and torch.equal(videos["resident"], videos["block"])
    mse = (videos["resident"] - full).pow(2).mean()
    psnr = 10 * torch.log10(4 / mse)  # frames in [-1, 1]: peak-to-peak 2
    assert mse > 0 and psnr > 30, psnr
