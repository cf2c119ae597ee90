"""The built-in recipe end to end at a micro scale: it trains every component, writes three official-layout
checkpoints, and those load and generate through the same code as the published weights."""

import json

import pytest
import torch

from wanflow.checkpoints.layouts import detect_layout
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.training.builtin import build_all
from wanflow.training.builtin_dit import dit_cycles
from wanflow.training.recipe import BUILTIN_TASKS, Recipe, prompt_corpus

MICRO = Recipe(
    height=32,
    width=32,
    frames=5,
    clip_frames=5,
    clips=16,
    i2v_clips=16,
    vae_steps=2,
    vae21_refine_steps=2,
    vae21_decoder_cycles=((2, 0.0), (1, 0.3)),
    vae22_refine_steps=2,
    vae22_decoder_cycles=((2, 0.0),),
    vae_batch=2,
    vae_frames=5,
    dit_steps=2,
    dense_steps=2,
    dit_refine_steps=(("t2v", 2), ("i2v", 2), ("ti2v", 2), ("t2v", 1)),
    dit_prompt_steps=(("t2v", 2), ("ti2v", 1)),
    dit_batch=4,
    sample_steps=2,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("builtin"), tmp_path_factory.mktemp("work")
    times = build_all(out, work, MICRO, report=lambda line: None)
    return out, work, times


def test_writes_three_official_checkpoints_with_their_defaults(built):
    out, _, times = built
    assert set(times) == {"data", "vae2.2", "ti2v", "vae2.1", "t2v", "i2v"}
    for short, task in BUILTIN_TASKS.items():
        layout = detect_layout(out / short)
        assert layout.kind == "official" and layout.is_moe == (short != "ti2v")
        name, defaults = layout.task_defaults()
        assert name == task and defaults["size"] == [32, 32] and defaults["frames"] == 5
        stored = json.loads((out / short / "wanflow.json").read_text())
        assert stored["defaults"]["steps"] == 2


@pytest.mark.parametrize("short", ["t2v", "i2v", "ti2v"])
def test_each_builtin_loads_and_generates(built, short):
    out, _, _ = built
    pipe = WanPipeline.from_pretrained(out / short)
    image = None
    if short != "t2v":
        from PIL import Image

        image = Image.new("RGB", (32, 32), (200, 30, 30))
    video = pipe("a red circle moving right on a black background", image=image, seed=0)
    assert video.frames.shape == (3, 5, 32, 32) and torch.isfinite(video.frames).all()


def test_resume_skips_finished_stages(built, tmp_path):
    out, work, _ = built
    ckpts = sorted(work.glob("*.ckpt"))
    assert [p.name for p in ckpts] == [
        "i2v-refine.ckpt",
        "i2v.ckpt",
        "t2v-refine.ckpt",
        "t2v-refine2.ckpt",
        "t2v-refine3.ckpt",
        "t2v.ckpt",
        "ti2v-refine.ckpt",
        "ti2v-refine2.ckpt",
        "ti2v.ckpt",
        "vae2.1-decoder.ckpt",
        "vae2.1-decoder2.ckpt",
        "vae2.1-refine.ckpt",
        "vae2.1.ckpt",
        "vae2.2-decoder.ckpt",
        "vae2.2-refine.ckpt",
        "vae2.2.ckpt",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in ckpts}
    build_all(tmp_path, work, MICRO, report=lambda line: None)  # a second run over the same work folder
    assert {p: p.stat().st_mtime_ns for p in ckpts} == stamps  # no stage trained again or re-saved its checkpoint
    files = sorted(f.relative_to(out) for f in out.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(tmp_path) for f in tmp_path.rglob("*") if f.is_file())
    for name in files:  # the same models, written again from the checkpoints
        if name.suffix == ".pth":
            first, second = (torch.load(root / name, weights_only=True) for root in (out, tmp_path))
            assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
        else:
            assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_dit_cycles_halve_the_rate_per_refine_of_the_task():
    recipe = Recipe(
        dit_steps=10,
        dense_steps=20,
        lr=1e-3,
        dit_refine_steps=(("t2v", 5), ("i2v", 7), ("t2v", 3)),
        dit_prompt_steps=(("t2v", 4),),
        short_prompt_p=0.25,
    )
    assert dit_cycles(recipe, "t2v", True) == [
        (10, 1e-3, "t2v", 0.0),
        (5, 5e-4, "t2v-refine", 0.0),
        (3, 2.5e-4, "t2v-refine2", 0.0),
        (4, 1.25e-4, "t2v-refine3", 0.25),  # the prompt cycles come last and go on halving
    ]
    assert dit_cycles(recipe, "i2v", True) == [(10, 1e-3, "i2v", 0.0), (7, 5e-4, "i2v-refine", 0.0)]
    assert dit_cycles(recipe, "ti2v", False) == [(20, 1e-3, "ti2v", 0.0)]


@pytest.mark.parametrize("short_p", [0.0, 1.0])
def test_prompt_cycles_train_on_the_prompts_without_background(tmp_path, short_p):
    from types import SimpleNamespace

    from torch import nn

    from wanflow.configs import DiTConfig
    from wanflow.models.dit import WanDiT
    from wanflow.training.builtin_dit import train_dits

    prompts = ["a red circle moving up on a black background", "a red circle moving up", ""]
    seen = []

    def contexts(index, ids, mask):
        seen.append(index.tolist())
        return torch.zeros(len(index), 4, 8)

    table = SimpleNamespace(
        encoder=SimpleNamespace(model=nn.Linear(1, 1)),
        prompts=prompts,
        tokens=lambda: (torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)),
        contexts=contexts,
    )
    cfg = DiTConfig(dim=16, ffn_dim=32, text_dim=8, text_len=4, num_heads=2, num_layers=1, in_dim=4, out_dim=4)
    recipe = Recipe(
        dit_steps=0, dit_refine_steps=(), dit_prompt_steps=(("t2v", 3),), short_prompt_p=short_p, dit_batch=5
    )
    experts = {"high": WanDiT(cfg), "low": WanDiT(cfg)}
    latents, full, short = torch.randn(6, 4, 1, 4, 4), torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    train_dits(experts, 0.9, latents, full, table, recipe, tmp_path, "t2v", short_ids=short)
    batches = seen[::2]  # each step asks for the batch's contexts, then for the empty prompt's
    assert len(batches) == 3 and seen[1::2] == [[2]] * 3
    assert batches == [[1 if short_p else 0] * 5] * 3  # prompt 1 is prompt 0 without its background
    if short_p:
        with pytest.raises(ValueError, match="short prompts"):
            train_dits(experts, 0.9, latents, full, table, recipe, tmp_path / "again", "t2v")  # no short_ids
        first_too = Recipe(dit_steps=2, dit_refine_steps=(), dit_prompt_steps=(("t2v", 3),), short_prompt_p=short_p)
        with pytest.raises(ValueError, match="short prompts"):
            train_dits(experts, 0.9, latents, full, table, first_too, tmp_path / "first", "t2v")
        assert not (tmp_path / "first" / "t2v.ckpt").exists()  # refused before the first cycle trained


def test_prompt_corpus_covers_held_out_words():
    from wanflow.data.shapes import HELD_OUT

    words = {w for p in prompt_corpus() for w in p.split()}
    assert all({c, s} <= words for c, s, _ in HELD_OUT)


def test_evaluation_runs_on_a_builtin_and_ablates_experts(built):
    import numpy as np

    from wanflow.data.shapes import HELD_OUT
    from wanflow.evaluation.evaluate import evaluate_case, only_expert, sharpness

    out, _, _ = built
    pipe = WanPipeline.from_pretrained(out / "t2v")
    combos = sorted(HELD_OUT)[:2]
    result = evaluate_case(pipe, with_image=False, per_combo=1, combos=combos)
    assert result.scores["n"] == 2 and all(0 <= result.scores[k] <= 1 for k in ("colour", "shape", "direction"))
    only_expert(pipe, "low")
    assert pipe.experts["high"] is pipe.experts["low"]
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, None, :, None] * 10, (2, 8, 1, 3))  # +10 per column
    assert sharpness(ramp) == 5.0  # mean of |d/dx| = 10 and |d/dy| = 0


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_polish_decoder_keeps_the_encoder(tmp_path, version):
    from wanflow.data.shapes import render_batch, sample_clips
    from wanflow.io.video import from_uint8
    from wanflow.models.vae import WanVAE
    from wanflow.training.builtin_vae import polish_decoder
    from wanflow.training.recipe import VAE21, VAE22

    torch.manual_seed(0)
    vae = WanVAE(VAE21 if version == "2.1" else VAE22).eval()
    videos = from_uint8(render_batch(sample_clips(0, 4, 32, 32, 5), 5, 32, 32))
    with torch.no_grad():
        z = vae.encode(videos[:2])
        before = vae.decode(z)
        encoder = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "conv2."))}
    polish_decoder(vae, videos, MICRO, 2, tmp_path / "decoder.ckpt")
    with torch.no_grad():
        assert torch.equal(vae.encode(videos[:2]), z)  # the DiTs' latents stay valid
        assert not torch.allclose(vae.decode(z), before)
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in encoder.items())
    assert not any(p.requires_grad for p in vae.parameters())
