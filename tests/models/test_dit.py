import json
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.overrides import TorchFunctionMode

from tests.sync import HostTransfers
from tests.tiny.dit import TINY_I2V, TINY_T2V, TINY_TI2V, random_dit, random_dit_state
from wanflow.checkpoints.io import write_folder
from wanflow.checkpoints.load import load_dit
from wanflow.checkpoints.maps import init_kwargs
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, dit_config_to_diffusers
from wanflow.configs import DIT_CONFIGS
from wanflow.models.dit import FP32_MODULES, TokenTimesteps, WanDiT, per_token, sinusoid
from wanflow.models.rope import apply_rope, rope_angles
from wanflow.runtime.precision import cast_model

GRID = (3, 4, 4)  # latent (T, H/2, W/2) tokens for a (3, 8, 8) latent


class Float64Timesteps(torch.nn.Module):
    """The reference sinusoid (float64, [cos, sin]) for diffusers' embedder, which computes it in float32."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
        args = t.double()[:, None] * freqs
        return torch.cat([args.cos(), args.sin()], -1).float()


def diffusers_dit(cfg, state, float64_sinusoid=True):
    kwargs = init_kwargs(dit_config_to_diffusers(cfg))
    model = WanTransformer3DModel(**kwargs).eval()
    model.load_state_dict(DIT_KEYMAP.forward(state), strict=True)
    if float64_sinusoid:
        model.condition_embedder.timesteps_proj = Float64Timesteps(cfg.freq_dim)
    return model


def write_official(cfg, state, folder):
    write_folder(state, folder, max_shard_bytes=40_000)  # small shards: exercises the index
    (folder / "config.json").write_text(json.dumps(cfg.to_json()))
    return folder


def inputs(cfg, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16 if cfg.model_type == "i2v" else cfg.in_dim, 3, 8, 8, generator=gen)
    y = torch.randn(1, 20, 3, 8, 8, generator=gen) if cfg.model_type == "i2v" else None
    context = torch.zeros(1, cfg.text_len, cfg.text_dim)
    context[:, :7] = torch.randn(1, 7, cfg.text_dim, generator=gen)  # 7 real tokens, zero padding after
    if cfg.model_type == "ti2v":  # per-token timesteps, first latent frame (16 tokens) at t = 0
        t = torch.full((1, math.prod(GRID)), 937.0)
        t[:, :16] = 0.0
    else:
        t = torch.tensor([937])
    return x, y, t, context


@pytest.mark.parametrize("cfg", [TINY_T2V, TINY_I2V, TINY_TI2V], ids=["t2v", "i2v", "ti2v"])
def test_matches_diffusers_loaded_from_official_layout(cfg, tmp_path):
    state = random_dit_state(cfg, seed=3)
    ours = load_dit(write_official(cfg, state, tmp_path / "dit"))
    x, y, t, context = inputs(cfg)
    with torch.no_grad():
        got = ours(x, t, context[:, :7], y=y)  # trimmed context: the model zero-pads it to text_len
        ref_in = x if y is None else torch.cat([x, y], 1)
        want = diffusers_dit(cfg, state)(ref_in, t, context, return_dict=False)[0]
        want32 = diffusers_dit(cfg, state, float64_sinusoid=False)(ref_in, t, context, return_dict=False)[0]
    scale = want.abs().max().item()
    assert scale > 1.0
    assert (got - want).abs().max().item() <= 1e-6 * scale
    if t.ndim == 2:  # TI2V: the factored timesteps the pipeline passes give the same velocity
        with torch.no_grad():
            assert torch.equal(ours(x, factored(t), context[:, :7], y=y), got)
    # Against stock diffusers (float32 sinusoid) the documented gap is ~1e-4 relative.
    assert (got - want32).abs().max().item() <= 1e-4 * scale


def factored(t):
    """The (1, L) per-token timesteps of ``inputs`` as TokenTimesteps: values [0, 937], index 0 on frame 0."""
    return TokenTimesteps(torch.tensor([[0.0, 937.0]]), (t != 0).long())


def test_per_token_timesteps_matter_and_frame_zero_sees_t0():
    cfg = TINY_TI2V
    model = random_dit(cfg, seed=4)
    x, _, t, context = inputs(cfg)
    with torch.no_grad():
        mixed = model(x, t, context)
        uniform = model(x, torch.tensor([937.0]), context)
        zero = model(x, torch.tensor([0.0]), context)
    assert (mixed - uniform).abs().max() > 1e-3
    assert (mixed - zero).abs().max() > 1e-3
    # The time MLP runs on the two distinct values; the frame-0 tokens pick the t = 0 row, the others t = 937.
    time = model.embed_time(t, t.shape[1])
    assert time.e.shape == (1, 2, cfg.dim) and time.e0.shape == (1, 2, 6, cfg.dim)
    e_zero, e_t = model.embed_time(torch.tensor([0.0]), 48), model.embed_time(torch.tensor([937.0]), 48)
    torch.testing.assert_close(per_token(time.e, time.index)[:, :16], e_zero.e.expand(1, 16, -1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        per_token(time.e0, time.index)[:, 16:], e_t.e0.expand(1, 32, 6, -1), rtol=1e-6, atol=1e-6
    )
    assert e_t.index is None and e_t.e.shape == (1, 1, cfg.dim)  # one value: broadcast, no index


def test_factored_timesteps_equal_the_plain_per_token_tensor():
    model = random_dit(TINY_TI2V, seed=4)
    x, _, t, context = inputs(TINY_TI2V)
    tt = factored(t)
    assert torch.equal(tt.dense(), t)
    with torch.no_grad():
        plain, fast = model(x, t, context), model(x, tt, context)
        batched = model(torch.cat([x, x]), tt.repeat(2), torch.cat([context, context.flip(-1)]))
    assert torch.equal(plain, fast)
    torch.testing.assert_close(batched[:1], fast, rtol=1e-5, atol=1e-5)
    assert (batched[1] - fast[0]).abs().max() > 1e-3  # the second sample has other text: the batch is real


def test_forward_is_sync_free():
    """See tests/sync.py. The (B,) and factored timesteps run through; the plain (B, L) tensor needs ``unique``."""
    cfg = TINY_TI2V
    with torch.device("meta"):
        model = WanDiT(cfg)
        x, context = torch.randn(2, cfg.in_dim, 3, 8, 8), torch.randn(2, 7, cfg.text_dim)
        tt = TokenTimesteps(torch.zeros(2, 2), torch.zeros(2, 48, dtype=torch.long))
        t, plain = torch.zeros(2), torch.zeros(2, 48)
    with HostTransfers() as transfers:  # (the default device is the host again)
        assert model(x, tt, context).shape == (2, cfg.out_dim, 3, 8, 8)
        assert model(x, t, context).shape == (2, cfg.out_dim, 3, 8, 8)
    assert transfers.seen == []
    with pytest.raises(NotImplementedError, match="unique"):
        model(x, plain, context)
    with HostTransfers() as transfers:
        torch.ones(3).to("meta")  # the recorder sees a host tensor going to the device
    assert transfers.seen


class Shapes(TorchFunctionMode):
    """Records the shape of every tensor a torch function returns."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, tuple | list) else (out,):
            if isinstance(o, torch.Tensor):
                self.seen.add(tuple(o.shape))
        return out


def test_per_token_modulation_is_never_materialised_six_wide():
    cfg = TINY_TI2V
    model = random_dit(cfg, seed=4)
    x, _, t, context = inputs(cfg)
    with torch.no_grad(), Shapes() as shapes:
        model(x, factored(t), context)
    six_wide = {s for s in shapes.seen if s[-3:] == (48, 6, cfg.dim) or s[-2:] == (48, 6 * cfg.dim)}
    assert not six_wide
    assert (1, 2, 6, cfg.dim) in shapes.seen  # the modulation tables, per distinct timestep
    assert (1, 48, cfg.dim) in shapes.seen  # a per-token row, picked for one product


def test_batch_equals_single_samples():
    model = random_dit(TINY_T2V, seed=5)
    x, _, _, context = inputs(TINY_T2V)
    xb = torch.cat([x, x.flip(-1)])
    cb = torch.cat([context, context.roll(1, dims=1)])
    tb = torch.tensor([999, 400])
    with torch.no_grad():
        batched = model(xb, tb, cb)
        singles = torch.cat([model(xb[i : i + 1], tb[i : i + 1], cb[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-5)


def test_sinusoid_matches_formula():
    t = torch.tensor([0, 1, 235, 999, 1000])
    got = sinusoid(t, 256)
    assert got.dtype == torch.float64
    for i, ti in enumerate(t.tolist()):
        for j in (0, 1, 64, 127):
            w = 10000 ** (-j / 128)
            assert got[i, j].item() == pytest.approx(math.cos(ti * w), abs=1e-12)
            assert got[i, 128 + j].item() == pytest.approx(math.sin(ti * w), abs=1e-12)


def test_rope_tables_match_reference_formula():
    head_dim, grid = 128, (3, 5, 7)
    angles = rope_angles(head_dim, grid)
    assert angles.shape == (3 * 5 * 7, 64)
    # wan22.md §3.7: 22/21/21 complex slots, real axis dims 44/42/42, inv_freq_j = 1 / 10000^(2j / D_a).
    for f, h, w in [(0, 0, 0), (2, 4, 6), (1, 3, 0)]:
        row = angles[(f * 5 + h) * 7 + w]
        want = (
            [f / 10000 ** (2 * j / 44) for j in range(22)]
            + [h / 10000 ** (2 * j / 42) for j in range(21)]
            + [w / 10000 ** (2 * j / 42) for j in range(21)]
        )
        torch.testing.assert_close(row, torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=1e-13)
    # Rotation of adjacent pairs equals the complex product of the reference.
    x = torch.randn(1, angles.shape[0], 2, head_dim, dtype=torch.float64)
    want = torch.view_as_real(
        torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(torch.ones_like(angles), angles)[None, :, None]
    ).flatten(-2)
    got = apply_rope(x, angles.cos().float(), angles.sin().float())
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "count"), [("t2v-A14B", 14_288_491_584), ("i2v-A14B", 14_288_901_184), ("ti2v-5B", 4_999_787_712)]
)
def test_full_size_parameter_counts(name, count):
    with torch.device("meta"):
        model = WanDiT(DIT_CONFIGS[name])
    assert sum(p.numel() for p in model.parameters()) == count
    n_keys = 1095 if name != "ti2v-5B" else 825
    assert len(model.state_dict()) == n_keys


def test_bfloat16_close_to_float32():
    model = random_dit(TINY_T2V, seed=6)
    x, _, t, context = inputs(TINY_T2V)
    with torch.no_grad():
        ref = model(x, t, context)
        cast_model(model, torch.bfloat16, keep_fp32=FP32_MODULES)
        got = model(x, t, context)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.time_embedding[0].weight.dtype == torch.float32
    assert model.blocks[0].modulation.dtype == torch.float32 and model.head.head.weight.dtype == torch.float32
    assert got.dtype == torch.float32
    rel = (got - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 2e-2


def test_bad_inputs_raise_clear_errors():
    model = random_dit(TINY_I2V)
    x, y, t, context = inputs(TINY_I2V)
    with pytest.raises(ValueError, match="expects"):
        model(x, t, context)  # i2v without its 20 conditioning channels
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.zeros(1, 5), context, y=y)
    with pytest.raises(ValueError, match=r"TokenTimesteps needs values \(B, K\) and index \(B, 48\)"):
        model(x, TokenTimesteps(torch.zeros(1, 2), torch.zeros(1, 5, dtype=torch.long)), context, y=y)


def test_skipped_blocks_pass_their_input_on():
    """``skip_blocks`` (skip layer guidance's weakened model): the forward of a model without those blocks."""
    model = random_dit(TINY_T2V.replace(num_layers=3), seed=5)
    x, t = torch.randn(1, 16, 3, 8, 8), torch.tensor([500])
    context = torch.randn(1, 9, TINY_T2V.text_dim)
    with torch.no_grad():
        skipped = model(x, t, context, skip_blocks=(0, 2))
        whole = model(x, t, context)
        model.blocks = torch.nn.ModuleList([model.blocks[1]])
        assert torch.equal(skipped, model(x, t, context)) and (whole - skipped).abs().max() > 0.01
