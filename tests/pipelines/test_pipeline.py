"""The pipeline's own behaviour on tiny official-layout checkpoints: seeds, experts, outputs, defaults."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.progress import Progress

KW = dict(size=(64, 64), frames=5, steps=4)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B"))


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("ti2v"), "ti2v-5B"))


def test_same_seed_same_frames_other_seed_other_frames(t2v):
    a = t2v("a blue square moving up", seed=7, **KW)
    b = t2v("a blue square moving up", seed=7, **KW)
    c = t2v("a blue square moving up", seed=8, **KW)
    assert torch.equal(a.frames, b.frames)
    assert (a.frames - c.frames).abs().max() > 1e-2
    assert a.seed == 7 and a.metadata["seed"] == 7


def test_seed_minus_one_draws_and_reports(t2v):
    v = t2v("a blue square", seed=-1, **KW)
    assert v.seed >= 0
    again = t2v("a blue square", seed=v.seed, **KW)
    assert torch.equal(v.frames, again.frames)


def test_noise_is_one_float32_randn_from_a_seeded_generator(t2v):
    noise = t2v.noise((16, 2, 8, 8), seed=123)
    want = torch.randn((16, 2, 8, 8), generator=torch.Generator().manual_seed(123), dtype=torch.float32)
    assert torch.equal(noise[0], want)


def test_expert_handoff_follows_the_boundary(t2v):
    steps = []
    t2v("x", seed=1, size=(64, 64), frames=5, steps=8, callback=steps.append)
    # official grid, shift 12, 8 steps: 999 988 972 952 922 877 | 799 631 with the boundary at 875
    assert [s.timestep for s in steps] == [999, 988, 972, 952, 922, 877, 799, 631]
    assert [s.expert for s in steps] == ["high"] * 6 + ["low"] * 2
    assert [s.guide_scale for s in steps] == [4.0] * 6 + [3.0] * 2  # (low, high) = (3.0, 4.0)


def test_ti2v_image_latent_stays_in_frame_zero(ti2v):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    seen = []
    video = ti2v("a yellow triangle", image=image, seed=2, size=(64, 64), frames=5, steps=3, callback=seen.append)
    assert video.frames.shape == (3, 5, 64, 64)  # best size for a 4:3 image within 64*64 pixels, multiple of 32
    assert len(seen) == 3


def test_png_frames_equal_the_returned_tensor(t2v, tmp_path):
    video = t2v("a white circle", seed=3, **KW)
    folder = video.save(str(tmp_path / "frames") + "/")
    for i, frame in enumerate(to_uint8(video.frames)):
        assert np.array_equal(np.asarray(Image.open(folder / f"{i:05d}.png")), frame)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(frames=8), "4n\\+1"),
        (dict(size=(60, 64)), "not divisible by 16"),
        (dict(steps=0), "sample_steps"),
        (dict(steps=2.5), "sample_steps"),
        (dict(guide_scale=-1.0), "guide_scale"),
        (dict(guide_scale=(1.0, 2.0, 3.0)), "guide_scale"),
        (dict(shift=0), "sample_shift"),
        (dict(solver="ddim"), "unknown sample_solver"),
        (dict(image=Image.new("RGB", (8, 8))), "takes no image"),
    ],
)
def test_bad_arguments(t2v, kwargs, match):
    with pytest.raises(ValueError, match=match):
        t2v("x", **{**KW, **kwargs})


def test_task_and_checkpoint_must_agree(tmp_path):
    root = write_official_checkpoint(tmp_path, "ti2v-5B")
    with pytest.raises(ValueError, match="needs a t2v model"):
        WanPipeline.from_pretrained(root, task="t2v-A14B")


def test_vae_tile_gives_the_same_frames_tile_by_tile(t2v, tmp_path):
    class Count(Progress):
        def advance(self, stage: str, **info: object) -> None:
            decoded.append(stage == "decode")

    tiled = WanPipeline.from_pretrained(write_official_checkpoint(tmp_path, "t2v-A14B"), vae_tile=3)
    tails, decoded = [], []
    tiled.vae.decoder.head.register_forward_hook(lambda *_: tails.append(1))
    whole = t2v("a green square", seed=4, **KW)
    video = tiled("a green square", seed=4, progress=Count(), **KW)
    assert len(tails) == 3 * 3 * 2  # 3x3 tiles of the 8x8 latent frame (3 does not divide 8), 2 latent frames each
    assert sum(decoded) == 2  # the decode bar still counts latent frames
    assert (video.frames - whole.frames).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="vae_tile is a tile size"):
        WanPipeline.from_pretrained(tmp_path, vae_tile=-1)


def test_convert_model_dtype_stores_the_dit_in_bf16_with_the_fp32_islands(tmp_path):
    """The reference's --convert_model_dtype: DiT parameters in bfloat16 (on a GPU the default already); the
    time MLP, modulation and head stay float32 as everywhere in wanflow."""
    ckpt = write_official_checkpoint(tmp_path, "ti2v-5B")
    plain = WanPipeline.from_pretrained(ckpt).experts["dense"]
    converted = WanPipeline.from_pretrained(ckpt, convert_model_dtype=True).experts["dense"]
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert converted.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert converted.blocks[0].modulation.dtype == converted.head.head.weight.dtype == torch.float32
    assert torch.equal(converted.blocks[0].ffn[0].weight, plain.blocks[0].ffn[0].weight.bfloat16())


def test_switch_step_gives_the_high_noise_expert_the_first_k_steps():
    """ComfyUI's split by steps: K = the steps the boundary gives is the default run bit for bit; another K moves
    the switch (and the guidance scale that goes with each expert); a dense model has no switch."""
    pipe = WanPipeline.from_builtin("t2v-A14B")
    run = dict(steps=6, guide_scale=(3.0, 4.0), seed=2)
    steps = []
    default = pipe("a red circle moving right", callback=steps.append, **run)
    k = sum(s.expert == "high" for s in steps)
    assert 0 < k < 6
    assert torch.equal(pipe("a red circle moving right", switch_step=k, **run).frames, default.frames)
    steps.clear()
    moved = pipe("a red circle moving right", switch_step=1, callback=steps.append, **run)
    assert [(s.expert, s.guide_scale) for s in steps] == [("high", 4.0)] + [("low", 3.0)] * 5
    assert not torch.equal(moved.frames, default.frames) and moved.metadata["switch_step"] == 1
    with pytest.raises(ValueError, match=r"switch_step is the number of high-noise steps, 0..6"):
        pipe("x", switch_step=7, **run)
    with pytest.raises(ValueError, match="ti2v-5B has one DiT"):
        WanPipeline.from_builtin("ti2v-5B")("x", switch_step=1, steps=2)
