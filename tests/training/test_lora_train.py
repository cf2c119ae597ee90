"""``train-lora`` on tiny checkpoints: the loss falls, each A14B expert sees only its timestep range, a resumed run
equals an uninterrupted one, the files it writes hold the Wan key format with alpha and metadata, and an FP8 base
trains a LoRA close to the bfloat16 one."""

import pytest
import torch
from safetensors import safe_open

from tests.tiny.checkpoint import write_official_checkpoint
from tests.training.lora_helpers import FRAMES, SIZE, crash_at, lora_tensors, settings, write_data
from wanflow.checkpoints.layouts import detect_layout
from wanflow.checkpoints.load import load_dit
from wanflow.checkpoints.lora import read_lora_file
from wanflow.runtime.lora import apply_lora
from wanflow.tasks import get_task
from wanflow.training import lora as lora_training
from wanflow.training.flow import expert_range, flow_matching_loss
from wanflow.training.lora import load_samples, train_lora
from wanflow.training.lora_settings import resolve_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {task: write_official_checkpoint(root / task, task) for task in ("t2v-A14B", "i2v-A14B", "ti2v-5B")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "clips", clips=3)


def fixed_loss(s, paths=None) -> float:
    """Mean flow-matching loss of the checkpoint (with the LoRA files ``paths`` applied) at fixed times and noise
    on every cached sample, summed over the trained experts."""
    layout, task = resolve_checkpoint(s)
    samples = load_samples(s, layout, task, 16, torch.device("cpu"))
    total = 0.0
    for name, folder in layout.experts.items():
        if paths is not None and name not in paths:
            continue
        model = load_dit(folder, layout.kind)
        if paths is not None:
            apply_lora(model, read_lora_file(paths[name]), "trained")
        lo, hi = expert_range(task.boundary, name)
        generator = torch.Generator().manual_seed(0)
        for sample in samples:
            for t in torch.linspace(lo, hi, 6)[:-1] + (hi - lo) / 12:
                noise = torch.randn(sample.latents.shape, generator=generator)
                with torch.no_grad():
                    loss = flow_matching_loss(model, sample.latents[None], sample.context[None], t[None], noise[None])
                total += float(loss) / len(samples) / 5
    return total


def test_the_loss_falls_on_a_tiny_checkpoint(tmp_path, ckpts, data):
    s = settings(data, tmp_path / "out/fall", ckpts["t2v-A14B"], steps=40, lr=5e-3, checkpoint_every=0)
    paths, history = train_lora(s, progress=False)
    before, after = fixed_loss(s), fixed_loss(s, paths)
    assert len(history.losses) == 40
    assert after < 0.85 * before, (before, after)
    assert sum(history.losses[-10:]) < sum(history.losses[:10])


def test_each_expert_trains_on_its_own_timestep_range(tmp_path, ckpts, data, monkeypatch):
    seen = []

    def spy(model, x0, context, t, noise, **kw):
        seen.append((id(model), float(t.min()), float(t.max())))
        return flow_matching_loss(model, x0, context, t, noise, **kw)

    monkeypatch.setattr(lora_training, "flow_matching_loss", spy)
    boundary = get_task("t2v-A14B").boundary
    paths, _ = train_lora(settings(data, tmp_path / "both/x", ckpts["t2v-A14B"], steps=12), progress=False)
    assert sorted(p.name for p in paths.values()) == ["x_high_noise.safetensors", "x_low_noise.safetensors"]
    models = sorted({m for m, _, _ in seen}, key=[m for m, _, _ in seen].index)
    assert len(models) == 2 and len(seen) == 24  # one loss per expert and step
    high = [(lo, hi) for m, lo, hi in seen if m == models[0]]
    low = [(lo, hi) for m, lo, hi in seen if m == models[1]]
    assert min(lo for lo, _ in high) >= boundary and max(hi for _, hi in low) < boundary
    seen.clear()
    paths, _ = train_lora(settings(data, tmp_path / "low/x", ckpts["t2v-A14B"], steps=3, expert="low"), progress=False)
    assert list(paths) == ["low"] and paths["low"].name == "x_low_noise.safetensors"
    assert len(seen) == 3 and max(hi for _, _, hi in seen) < boundary


@pytest.mark.parametrize("task", ["i2v-A14B", "ti2v-5B"])
def test_i2v_and_ti2v(task, tmp_path, ckpts, data):
    s = settings(
        data, tmp_path / "x", ckpts[task], task=task, steps=2, size=(32, 32) if task != "ti2v-5B" else (64, 64)
    )
    paths, history = train_lora(s, progress=False)
    names = sorted(p.name for p in paths.values())
    assert names == (
        ["x.safetensors"] if task == "ti2v-5B" else ["x_high_noise.safetensors", "x_low_noise.safetensors"]
    )
    assert len(history.losses) == 2
    for path in paths.values():
        assert read_lora_file(path).deltas  # wanflow reads it


def test_the_file_is_the_wan_format_with_alpha_and_metadata(tmp_path, ckpts, data):
    s = settings(data, tmp_path / "m/x", ckpts["t2v-A14B"], steps=2, rank=4, alpha=2.0)
    paths, _ = train_lora(s, progress=False)
    with safe_open(paths["high"], "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alpha = f.get_tensor("diffusion_model.blocks.0.self_attn.q.alpha")
        down = f.get_tensor("diffusion_model.blocks.1.ffn.0.lora_down.weight")
        up = f.get_tensor("diffusion_model.blocks.1.ffn.0.lora_up.weight")
    cfg = load_dit(detect_layout(ckpts["t2v-A14B"]).experts["high"]).cfg
    assert len(keys) == 3 * 10 * cfg.num_layers
    assert float(alpha) == 2.0 and down.shape == (4, cfg.dim) and up.shape == (cfg.ffn_dim, 4)
    assert meta["wanflow_trigger_words"] == "zorb, sliding, right, take"
    assert meta["wanflow_expert"] == "high" and meta["wanflow_steps"] == "2" and meta["ss_network_dim"] == "4"
    assert '"rank": 4' in meta["wanflow_settings"]


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, ckpts, data, monkeypatch):
    straight, _ = train_lora(settings(data, tmp_path / "a/x", ckpts["t2v-A14B"], steps=5), progress=False)
    crash_at(monkeypatch, 3)
    s = settings(data, tmp_path / "b/x", ckpts["t2v-A14B"], steps=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lora(s, progress=False)
    monkeypatch.undo()
    interrupted = {name: path for name, path in straight.items()}
    with safe_open(str(tmp_path / "b/x_high_noise.safetensors"), "pt") as f:
        assert f.metadata()["wanflow_steps"] == "2"  # the last checkpoint's LoRA, usable
    read_lora_file(tmp_path / "b/x_high_noise.safetensors")
    with pytest.raises(ValueError, match="--resume"):
        train_lora(s, progress=False)
    resumed, history = train_lora(settings(data, tmp_path / "b/x", ckpts["t2v-A14B"], steps=5, resume=True), False)
    assert len(history.losses) == 5
    ours, theirs = lora_tensors(resumed), lora_tensors(interrupted)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(v.abs().max() > 0 for k, v in ours.items() if "lora_up" in k)  # trained, not all zero
    with pytest.raises(ValueError, match="other experts or another rank"):
        train_lora(settings(data, tmp_path / "b/x", ckpts["t2v-A14B"], steps=6, rank=8, resume=True), False)


def deltas(tensors):
    """Each module's ``up @ down`` (the LoRA's weight change up to alpha / rank), by expert and module."""
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    return {k: tensors[k.replace("lora_down", "lora_up")].float() @ tensors[k].float() for k in downs}


def relative(a, b):
    return float(
        torch.stack([(a[k] - b[k]).norm() for k in b]).norm() / torch.stack([v.norm() for v in b.values()]).norm()
    )


def test_an_fp8_base_trains_a_lora_close_to_the_bfloat16_one(tmp_path, ckpts, data):
    runs, losses = {}, {}
    for base, seed in (("bfloat16", 0), ("fp8", 0), ("bfloat16", 1)):
        s = settings(data, tmp_path / f"{base}{seed}/x", ckpts["t2v-A14B"], steps=10, base=base, seed=seed)
        paths, history = train_lora(s, progress=False)
        runs[base, seed], losses[base, seed] = deltas(lora_tensors(paths)), history.losses
    # e4m3 moves each base weight by up to 6%: the losses stay within 2%, the LoRA within 20% of the bf16 one,
    # where a LoRA trained on the same base with another seed differs by more than 80%
    assert all(abs(a - b) < 0.02 * b for a, b in zip(losses["fp8", 0], losses["bfloat16", 0], strict=True))
    assert 0 < relative(runs["fp8", 0], runs["bfloat16", 0]) < 0.2
    assert relative(runs["bfloat16", 1], runs["bfloat16", 0]) > 0.8


def test_samples_show_the_lora_and_leave_training_unchanged(tmp_path, ckpts, data, monkeypatch):
    from wanflow.pipelines import pipeline
    from wanflow.pipelines.pipeline import WanPipeline

    saved, save = [], pipeline.Video.save
    monkeypatch.setattr(pipeline.Video, "save", lambda video, path: saved.append(video.frames) or save(video, path))
    plain, _ = train_lora(settings(data, tmp_path / "a/x", ckpts["t2v-A14B"], steps=4, lr=2e-2), progress=False)
    s = settings(data, tmp_path / "b/x", ckpts["t2v-A14B"], steps=4, lr=2e-2, sample_prompt="a zorb sliding right")
    sampled, _ = train_lora(s, progress=False)
    ours, theirs = lora_tensors(sampled), lora_tensors(plain)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # sampling draws nothing from training's RNGs
    assert sorted(p.name for p in (tmp_path / "b").glob("*.mp4")) == ["x_step00002.mp4", "x_step00004.mp4"]
    pipe = WanPipeline.from_pretrained(ckpts["t2v-A14B"], device="cpu")
    base = pipe("a zorb sliding right", size=SIZE, frames=FRAMES, seed=0).frames
    for expert, path in sampled.items():
        pipe.load_lora(path, expert=expert, name=expert)
    want = pipe("a zorb sliding right", size=SIZE, frames=FRAMES, seed=0).frames
    # the sample at the last step is the frames of the LoRA written then (its factors rounded to bfloat16)
    assert (saved[-1] - want).abs().max() < 0.1 * (saved[-1] - base).abs().max()


def test_targets_choose_the_linears_that_get_factors(tmp_path, ckpts, data):
    s = settings(data, tmp_path / "t/x", ckpts["t2v-A14B"], steps=1, targets=("cross_attn.k", "ffn.2"))
    paths, _ = train_lora(s, progress=False)
    with safe_open(paths["low"], "pt") as f:
        modules = sorted({k.split(".", 3)[3].removesuffix(".alpha") for k in f.keys() if k.endswith(".alpha")})
    assert modules == ["cross_attn.k", "ffn.2"]
    with pytest.raises(ValueError, match="LoRA targets"):
        settings(data, tmp_path / "t/y", ckpts["t2v-A14B"], targets=("head.head",))
