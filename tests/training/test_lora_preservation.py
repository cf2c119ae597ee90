"""``train-lora --prior_data DIR --prior_target base`` (output preservation): the prior clips are trained towards
the frozen base model's prediction on the same noisy input (the expert with its LoRA factors switched off), not
towards their own ``eps - x0``. An untrained LoRA is the base, so the prior term starts at exactly zero; training
keeps the LoRA's predictions on the prior clips nearer the base's than a run without it; streamed blocks train the
same LoRA. (A resumed run equals an uninterrupted one: test_lora_prior.)"""

import json

import pytest
import torch
from safetensors import safe_open

from tests.tiny.checkpoint import write_official_checkpoint
from tests.training.lora_helpers import lora_tensors, settings
from wanflow.checkpoints.lora import read_lora_file
from wanflow.cli import main as cli_main
from wanflow.cli.train_lora import PRIOR_TARGETS as CLI_PRIOR_TARGETS
from wanflow.runtime.lora import apply_lora
from wanflow.training.flow import add_noise, flow_matching_loss
from wanflow.training.lora import load_base, load_data, train_lora
from wanflow.training.lora_factors import LoraFactors, attach, base_velocity, target_shapes
from wanflow.training.lora_settings import PRIOR_TARGETS, LoraSettings, resolve_checkpoint


def expert_with_random_lora(s: LoraSettings, name: str = "high"):
    layout, _ = resolve_checkpoint(s)
    model = load_base(layout, name, s, torch.device("cpu"))
    factors = LoraFactors(target_shapes(model), rank=2, alpha=2.0, seed=1)
    with torch.no_grad():
        for up in factors.up:
            up.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    attach(model, factors)
    return layout, model, factors


def test_the_teacher_is_the_expert_without_its_lora(tmp_path, ckpt, data):
    s = settings(data, tmp_path / "x", ckpt)
    layout, model, factors = expert_with_random_lora(s)
    plain = load_base(layout, "high", s, torch.device("cpu"))  # the same weights, no hooks
    g = torch.Generator().manual_seed(3)
    x0, noise = (torch.randn(2, plain.cfg.in_dim, 2, 4, 4, generator=g) for _ in range(2))
    context, t = torch.randn(2, 16, plain.cfg.text_dim, generator=g), torch.tensor([0.95, 0.9])
    loss = flow_matching_loss(model, x0, context, t, noise, teacher=base_velocity(model, factors))
    x_t = add_noise(x0, noise, t)
    with torch.no_grad():
        with_lora, base = model(x_t, 1000 * t, context), plain(x_t, 1000 * t, context)
    assert factors.active  # switched on again after the teacher's forward
    assert loss.item() == pytest.approx(((with_lora - base) ** 2).mean().item(), rel=1e-5)
    assert loss.item() > 1e-3 * (base**2).mean().item()  # the LoRA does change the prediction


def test_an_untrained_lora_has_no_prior_loss_then_it_pulls_towards_the_base(tmp_path, ckpt, data):
    kw = dict(batch_size=2, expert="high", lr=3e-2)
    plain, plain_history = train_lora(settings(data, tmp_path / "a/x", ckpt, steps=1, **kw), progress=False)
    kept, kept_history = train_lora(
        settings(data, tmp_path / "b/x", ckpt, steps=1, prior_data=data, prior_target="base", **kw), False
    )
    ours, theirs = lora_tensors(kept), lora_tensors(plain)
    assert kept_history.losses == plain_history.losses  # step 1: the prior term is exactly 0, and so its gradient
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Ten steps, the prior folder being the training clips themselves: preservation keeps the LoRA's prediction
    # on them nearer the base's than the run without it, and the flow target does not do the same.
    runs = {
        "none": {},
        "flow": dict(prior_data=data, prior_weight=4.0),
        "base": dict(prior_data=data, prior_weight=4.0, prior_target="base"),
    }
    gaps = {name: gap_to_base(tmp_path / name, ckpt, data, steps=10, **kw, **extra) for name, extra in runs.items()}
    assert gaps["base"] < 0.5 * gaps["none"] and gaps["base"] < 0.5 * gaps["flow"], gaps


def gap_to_base(folder, ckpt, data, **kw) -> float:
    """Mean squared difference between the trained LoRA's and the base's velocity on the data's clips."""
    s = settings(data, folder / "x", ckpt, **kw)
    paths, _ = train_lora(s, progress=False)
    layout, task = resolve_checkpoint(s)
    samples, _ = load_data(s, layout, task, 16, torch.device("cpu"))
    base = load_base(layout, "high", s, torch.device("cpu"))
    tuned = apply_lora(load_base(layout, "high", s, torch.device("cpu")), read_lora_file(paths["high"]), "trained")
    x0 = torch.stack([sample.latents for sample in samples])
    context = torch.stack([sample.context for sample in samples])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    t = torch.full((len(samples),), 0.95)
    return flow_matching_loss(tuned, x0, context, t, noise, teacher=base).item()


def test_the_cli_passes_the_target_and_refuses_it_without_prior_data(tmp_path, ckpt, data, capsys):
    assert CLI_PRIOR_TARGETS == PRIOR_TARGETS
    with pytest.raises(ValueError, match="the prior target must be one of"):
        LoraSettings(data, str(tmp_path / "x"), prior_data=data, prior_target="teacher")
    out = tmp_path / "cli/x"
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--ckpt_dir", str(ckpt), "--out", str(out), "--steps", "1"]
    argv += ["--size", "32*32", "--frames", "5", "--rank", "2", "--device", "cpu", "--expert", "low"]
    assert cli_main([*argv, "--prior_target", "base"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wanflow: error: --prior_target is the target of the clips of")
    assert cli_main([*argv, "--prior_data", str(data), "--prior_target", "base"]) == 0
    with safe_open(f"{out}_low_noise.safetensors", "pt") as f:
        recorded = json.loads(f.metadata()["wanflow_settings"])
    assert recorded["prior_target"] == "base" and recorded["prior_data"] == str(data)


def test_streamed_blocks_give_the_teacher_and_the_lora_of_resident_ones(tmp_path, ckpt, data):
    kw = dict(steps=3, batch_size=2, lr=3e-2, prior_data=data, prior_target="base")
    resident, history = train_lora(settings(data, tmp_path / "a/x", ckpt, **kw), progress=False)
    streamed, streamed_history = train_lora(settings(data, tmp_path / "b/x", ckpt, offload="block", **kw), False)
    assert streamed_history.losses == history.losses
    ours, theirs = lora_tensors(streamed), lora_tensors(resident)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("task", ["i2v-A14B", "ti2v-5B"])
def test_image_conditioned_experts_start_with_no_prior_loss(task, tmp_path_factory, data):
    """The teacher sees the student's conditioning (I2V's y, TI2V's clean frame 0), so an untrained LoRA's prior term
    is exactly 0 there too; a second step differs from the run without prior data."""
    ckpt = write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / task, task)
    tmp = tmp_path_factory.mktemp("runs")
    kw = dict(task=task, batch_size=2, lr=3e-2, size=(32, 32) if task != "ti2v-5B" else (64, 64))
    for steps in (1, 2):
        plain, plain_history = train_lora(settings(data, tmp / f"a{steps}/x", ckpt, steps=steps, **kw), False)
        kept, kept_history = train_lora(
            settings(data, tmp / f"b{steps}/x", ckpt, steps=steps, prior_data=data, prior_target="base", **kw), False
        )
        same = kept_history.losses == plain_history.losses
        assert same if steps == 1 else not same
        ours, theirs = lora_tensors(kept), lora_tensors(plain)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours) == (steps == 1)
