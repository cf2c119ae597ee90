import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file
from torch import nn

from tests.tiny.vae import TINY_VAE21, TINY_VAE22, random_vae, random_vae_state
from wanflow.checkpoints.io import load_strict, read_weights
from wanflow.checkpoints.maps import init_kwargs
from wanflow.checkpoints.maps.vae import (
    vae_config_from_diffusers,
    vae_config_from_state_dict,
    vae_config_to_diffusers,
    vae_keymap,
)
from wanflow.configs import VAE_CONFIGS, VAEConfig
from wanflow.models import vae_blocks
from wanflow.models.vae import WanVAE
from wanflow.models.vae_blocks import CausalConv3d, normalize_channels


# ATen's own CPU kernels, as diffusers gets them: comparisons that must be bit-equal (diffusers parity, causal
# prefixes) use one kernel choice; our CPU fast paths (oneDNN convolutions, the channel norm as a sum) are compared
# with it at rounding level separately.
def aten_kernels():
    return torch.backends.mkldnn.flags(enabled=False)


TINY = {"2.1": TINY_VAE21, "2.2": TINY_VAE22}


def diffusers_vae(cfg: VAEConfig) -> AutoencoderKLWan:
    kwargs = init_kwargs(vae_config_to_diffusers(cfg))
    return AutoencoderKLWan(**kwargs).eval()


def video(batch: int, frames: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1


def stats(cfg: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and 1/std as the pipelines apply them."""
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    return mean, 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def pair(request, tmp_path_factory):
    """(wanflow VAE, diffusers VAE) on the same random weights, both read from one file in the official layout."""
    cfg = TINY[request.param]
    state = random_vae_state(cfg, seed=7)
    path = tmp_path_factory.mktemp("vae") / ("vae.pth" if cfg.version == "2.1" else "vae.safetensors")
    torch.save(state, path) if path.suffix == ".pth" else save_file(state, path)
    loaded = read_weights(path)
    inferred = vae_config_from_state_dict(loaded)
    assert inferred == cfg
    with torch.device("meta"):
        ours = WanVAE(inferred)
    load_strict(ours, loaded, "VAE")
    ref = diffusers_vae(cfg)
    ref.load_state_dict(vae_keymap(cfg).forward(loaded), strict=True)
    return ours.eval(), ref


@pytest.mark.parametrize(("batch", "frames"), [(1, 1), (1, 5), (2, 9)])
def test_matches_diffusers(pair, batch, frames):
    ours, ref = pair
    mean, inv_std = stats(ours.cfg)
    x = video(batch, frames, seed=frames)
    with torch.no_grad(), aten_kernels():
        z = ours.encode(x)
        z_ref = (ref.encode(x).latent_dist.mode() - mean) * inv_std
        y = ours.decode(z)
        y_ref = ref.decode(z / inv_std + mean).sample
    s = ours.cfg.stride
    assert z.shape == (batch, ours.cfg.z_dim, 1 + (frames - 1) // 4, 64 // s[1], 64 // s[2])
    assert y.shape == x.shape
    assert z.abs().max() > 0.5 and z.std() > 0.1
    assert (y.abs() < 0.99).float().mean() > 0.5  # mostly not clamped: the comparison sees real values
    assert (z - z_ref).abs().max().item() <= 1e-6
    assert (y - y_ref).abs().max().item() <= 1e-6


def test_cpu_onednn_path_matches_aten_kernels(pair):
    ours, _ = pair
    x = video(1, 5, seed=3)
    with torch.no_grad():
        z, y = ours.encode(x), ours.decode(ours.encode(x))
        with aten_kernels():
            z_aten, y_aten = ours.encode(x), ours.decode(ours.encode(x))
    assert 0 < (y - y_aten).abs().max().item() <= 1e-5  # other kernels, so not bit-equal; rounding only
    assert (z - z_aten).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape", [(2, 16, 3, 8, 8), (3, 96, 8, 8)])  # video-shaped and per-frame (attention)
def test_channel_norm_fast_path_matches_f_normalize(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    x[0, :, 0] = 0  # an all-zero position: 0, as F.normalize gives, not NaN
    expected = torch.nn.functional.normalize(x, dim=1)
    fast = normalize_channels(x)
    assert 0 < (fast - expected).abs().max().item() <= 1e-6  # a different sum order: rounding only
    assert torch.equal(fast[0, :, 0], torch.zeros_like(fast[0, :, 0]))
    for dtype in (torch.bfloat16, torch.float16):  # computed in float32, rounded once
        low = x.to(dtype)
        half, truth = normalize_channels(low), torch.nn.functional.normalize(low.double(), dim=1)
        rounding = torch.finfo(dtype).eps / 2
        assert half.dtype == dtype and ((half.double() - truth).abs() <= truth.abs() * rounding + 1e-7).all()
    with aten_kernels():
        assert torch.equal(normalize_channels(x), expected)
    x.requires_grad_()  # training: F.normalize's own gradient (its out= buffer would refuse autograd)
    assert torch.equal(normalize_channels(x), expected)


def test_encode_is_causal(pair):
    ours, _ = pair
    x = video(1, 9, seed=1)
    with torch.no_grad(), aten_kernels():
        z9 = ours.encode(x)
        z5 = ours.encode(x[:, :, :5])
        z1 = ours.encode(x[:, :, :1])
        changed = x.clone()
        changed[:, :, 5:] = -changed[:, :, 5:]
        z_changed = ours.encode(changed)
    assert torch.equal(z5, z9[:, :, :2])
    assert torch.equal(z1, z9[:, :, :1])
    assert torch.equal(z_changed[:, :, :2], z9[:, :, :2])
    assert (z_changed[:, :, 2] - z9[:, :, 2]).abs().max() > 1e-2


def test_decode_is_causal(pair):
    ours, _ = pair
    z = torch.randn(1, ours.cfg.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), aten_kernels():
        y3 = ours.decode(z)
        y2 = ours.decode(z[:, :, :2])
        y1 = ours.decode(z[:, :, :1])
    assert y3.shape[2] == 9 and y2.shape[2] == 5 and y1.shape[2] == 1
    assert torch.equal(y2, y3[:, :, :5])
    assert torch.equal(y1, y3[:, :, :1])
    assert (y3[:, :, 5:] - y2[:, :, -1:]).abs().max() > 1e-2


def test_chunked_equals_whole_sequence(pair):
    ours, _ = pair
    x = video(1, 13, size=32, seed=3)
    with torch.no_grad():
        z = ours.encode(x)
        z_whole = ours.encode(x, chunked=False)
        y = ours.decode(z)
        y_whole = ours.decode(z, chunked=False)
    assert z.shape[2] == 4 and y.shape == x.shape
    assert (z - z_whole).abs().max().item() <= 1e-5
    assert (y - y_whole).abs().max().item() <= 1e-5


def test_computes_in_weight_dtype():
    model = random_vae(TINY_VAE21, seed=4)
    x = video(1, 5, size=32, seed=4)
    with torch.no_grad():
        z32 = model.encode(x)
        model.double()
        z64 = model.encode(x)
        y64 = model.decode(z64)
    assert z64.dtype == torch.float64 and y64.dtype == torch.float64
    assert (z64 - z32.double()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "conv", [nn.Conv2d(8, 6, 3, padding=1), CausalConv3d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 3, stride=2)]
)
def test_16_bit_convolution_where_onednn_refuses_it(conv, dtype, monkeypatch):
    monkeypatch.setattr(vae_blocks, "onednn_takes", lambda dtype: False)  # as on an AVX2-only CPU
    torch.manual_seed(0)
    conv = conv.to(dtype)
    x = torch.randn(2, 8, *((3,) if isinstance(conv, nn.Conv3d) else ()), 12, 12).to(dtype)
    y = vae_blocks.convolve(x, conv)
    padding = (0, *conv.padding[1:]) if isinstance(conv, nn.Conv3d) else conv.padding  # time: no padding here
    convnd = torch.nn.functional.conv3d if isinstance(conv, nn.Conv3d) else torch.nn.functional.conv2d
    exact = convnd(x.double(), conv.weight.double(), conv.bias.double(), conv.stride, padding)
    assert y.dtype == dtype and y.shape == exact.shape
    rounding = torch.finfo(dtype).eps / 2  # rounded once, from float32 sums
    assert ((y.double() - exact).abs() <= exact.abs() * rounding + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_16_bit_vae_on_any_cpu(version, dtype):
    """16-bit VAEs run on CPUs whose oneDNN refuses them (AVX2 only, as the dev machine): in float32 there."""
    model = random_vae(TINY[version], seed=4)
    x = video(1, 5, size=32, seed=4)
    with torch.no_grad():
        z, y = model.encode(x), model.decode(model.encode(x))
        model.to(dtype)
        z16, y16 = model.encode(x), model.decode(z)
    assert z16.dtype == y16.dtype == dtype
    for low, full in ((z16, z), (y16, y)):  # 16-bit rounding: about 1% of the values' size on average (bfloat16)
        assert (low.float() - full).abs().mean() <= 0.03 * full.abs().mean()


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_keymap_round_trip(version):
    cfg = TINY[version]
    official = random_vae_state(cfg)
    theirs = diffusers_vae(cfg).state_dict()
    km = vae_keymap(cfg)
    converted = km.forward(official)
    assert len(converted) == len(official) == len(theirs)
    assert set(converted) == set(theirs)
    assert all(converted[k].shape == v.shape for k, v in theirs.items())
    back = km.reverse(converted)
    assert list(back) == list(official) and all(back[k] is official[k] for k in official)
    assert km.forward(km.reverse(theirs)).keys() == theirs.keys()


@pytest.mark.parametrize("name", ["wan2.1", "wan2.2"])
def test_full_size_keymap_matches_diffusers(name):
    cfg = VAE_CONFIGS[name]
    with torch.device("meta"):
        ours = WanVAE(cfg).state_dict()
        theirs = diffusers_vae(cfg).state_dict()
    converted = vae_keymap(cfg).forward(ours)
    assert set(converted) == set(theirs)
    assert all(converted[k].shape == v.shape for k, v in theirs.items())


@pytest.mark.parametrize(("name", "keys", "params"), [("wan2.1", 194, 126_892_531), ("wan2.2", 196, 704_688_668)])
def test_full_size_models(name, keys, params):
    cfg = VAE_CONFIGS[name]
    with torch.device("meta"):
        model = WanVAE(cfg)
    state = model.state_dict()
    assert len(state) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    assert list(model.buffers()) == []
    assert vae_config_from_state_dict(state) == cfg
    assert vae_config_from_diffusers(vae_config_to_diffusers(cfg)) == cfg
    if name == "wan2.2":  # examples from the published checkpoint
        assert state["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
        assert state["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)
        assert state["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY_VAE21,
        TINY_VAE22,
        VAEConfig(
            version="2.1",
            base_dim=4,
            decoder_dim=6,
            z_dim=4,
            dim_mult=(1, 2, 2),
            num_res_blocks=1,
            temporal_downsample=(True, False),
            latents_mean=(0.0,) * 4,
            latents_std=(1.0,) * 4,
        ),
        VAEConfig(
            version="2.2",
            base_dim=4,
            decoder_dim=4,
            z_dim=8,
            dim_mult=(1, 2, 2),
            num_res_blocks=3,
            temporal_downsample=(False, True),
            patch_size=2,
            latents_mean=(0.0,) * 8,
            latents_std=(1.0,) * 8,
        ),
    ],
    ids=["tiny21", "tiny22", "odd21", "odd22"],
)
def test_config_round_trips(cfg):
    with torch.device("meta"):
        state = WanVAE(cfg).state_dict()
    assert vae_config_from_state_dict(state) == cfg
    assert vae_config_from_diffusers(vae_config_to_diffusers(cfg)) == cfg


def test_odd_config_runs():
    cfg = VAEConfig(
        version="2.2",
        base_dim=4,
        decoder_dim=4,
        z_dim=8,
        dim_mult=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, False),
        patch_size=2,
        latents_mean=(0.0,) * 8,
        latents_std=(1.0,) * 8,
    )
    model = random_vae(cfg)
    x = video(1, 5, size=16)
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
        assert (z - model.encode(x, chunked=False)).abs().max() <= 1e-5
    assert z.shape == (1, 8, 3, 2, 2) and y.shape == x.shape


def test_config_from_published_diffusers_json():
    data = {
        "base_dim": 160,
        "decoder_base_dim": 256,
        "z_dim": 48,
        "is_residual": True,
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_spatial": 16,
        "scale_factor_temporal": 4,
        "latents_mean": list(VAE_CONFIGS["wan2.2"].latents_mean),
        "latents_std": list(VAE_CONFIGS["wan2.2"].latents_std),
    }
    assert vae_config_from_diffusers(data) == VAE_CONFIGS["wan2.2"]
    assert vae_config_from_diffusers({}) == VAE_CONFIGS["wan2.1"]
    with pytest.raises(ValueError, match="patch_size"):
        vae_config_from_diffusers({"in_channels": 12})


def test_config_from_state_dict_rejects_other_weights():
    with pytest.raises(ValueError, match="official layout"):
        vae_config_from_state_dict({"blocks.0.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((3, 5, 64, 64), torch.float32, "batch"),
        ((1, 4, 5, 64, 64), torch.float32, "batch"),
        ((1, 3, 6, 64, 64), torch.float32, "1 \\+ 4k"),
        ((1, 3, 5, 60, 64), torch.float32, "multiples of"),
        ((1, 3, 5, 64, 64), torch.uint8, "float"),
    ],
)
def test_rejects_bad_video(pair, shape, dtype, match):
    ours, _ = pair
    with pytest.raises(ValueError, match=match):
        ours.encode(torch.zeros(shape, dtype=dtype))


def test_rejects_bad_latents(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=f"batch, {ours.cfg.z_dim}"):
        ours.decode(torch.zeros(1, ours.cfg.z_dim + 1, 2, 4, 4))
    with pytest.raises(ValueError, match="latents"):
        ours.decode(torch.zeros(ours.cfg.z_dim, 2, 4, 4))
