"""``train-lora --prior_data DIR --prior_weight W`` (DreamBooth's prior preservation): each step's loss is the main
batch's flow-matching loss plus W times that of an equally large batch from the prior folder; W = 0 trains exactly
what a run without prior data trains; a resumed run equals an uninterrupted one; bad prior files are named."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.training.lora_helpers import bar_clip, crash_at, lora_tensors, settings, write_data
from wanflow.cli import main as cli_main
from wanflow.io.video import save_video
from wanflow.tasks import get_task
from wanflow.training import lora as lora_training
from wanflow.training.flow import flow_matching_loss
from wanflow.training.lora import load_data, train_lora
from wanflow.training.lora_settings import LoraSettings, resolve_checkpoint


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """Clips unlike the main ones (the bar further on, flipped upside down), captioned without the word."""
    folder = tmp_path_factory.mktemp("prior") / "clips"
    folder.mkdir()
    for i in range(3):
        save_video(np.ascontiguousarray(bar_clip(6 + 3 * i)[:, ::-1]), folder / f"known{i}.mp4", fps=8)
        (folder / f"known{i}.txt").write_text(f"a yellow bar sliding right, known {i}\n")
    return folder


def by_hand(model, x0, context, t, noise) -> float:
    """The flow-matching loss written out: ``x_t = (1 - t) x0 + t eps``, target ``eps - x0``."""
    s = t.view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        velocity = model((1 - s) * x0 + s * noise, 1000 * t, context)
    return float(((velocity.float() - (noise - x0).float()) ** 2).mean())


def rows_among(x0, samples) -> bool:
    return all(any(torch.equal(row, s.latents) for s in samples) for row in x0)


def test_the_loss_is_the_main_loss_plus_w_times_the_prior_loss(tmp_path, ckpt, data, prior, monkeypatch):
    calls = []

    def spy(model, x0, context, t, noise, **kw):
        calls.append((x0.clone(), t.clone(), by_hand(model, x0, context, t, noise)))
        return flow_matching_loss(model, x0, context, t, noise, **kw)

    monkeypatch.setattr(lora_training, "flow_matching_loss", spy)
    s = settings(data, tmp_path / "w/x", ckpt, steps=2, batch_size=2, expert="high", prior_data=prior, prior_weight=2.5)
    _, history = train_lora(s, progress=False)
    layout, task = resolve_checkpoint(s)
    main, known = load_data(s, layout, task, 16, torch.device("cpu"))
    assert len(main) == 2 and len(known) == 3
    assert len(calls) == 4  # per step: the main batch, then the prior batch
    boundary = get_task("t2v-A14B").boundary
    for step in range(2):
        (x_main, t_main, loss_main), (x_prior, t_prior, loss_prior) = calls[2 * step : 2 * step + 2]
        assert x_main.shape[0] == x_prior.shape[0] == 2
        assert rows_among(x_main, main) and rows_among(x_prior, known)
        assert min(t_main.min(), t_prior.min()) >= boundary  # the high expert's range for both
        assert history.losses[step] == pytest.approx(loss_main + 2.5 * loss_prior, rel=1e-5)
        assert loss_prior > 0.05 * loss_main  # the prior term is not negligible here


def test_weight_zero_trains_exactly_what_no_prior_data_trains(tmp_path, ckpt, data, prior):
    plain, plain_history = train_lora(settings(data, tmp_path / "a/x", ckpt, steps=4, batch_size=2), progress=False)
    zero, zero_history = train_lora(
        settings(data, tmp_path / "b/x", ckpt, steps=4, batch_size=2, prior_data=prior, prior_weight=0.0), False
    )
    one, _ = train_lora(settings(data, tmp_path / "c/x", ckpt, steps=4, batch_size=2, prior_data=prior), False)
    ours, theirs, weighted = lora_tensors(zero), lora_tensors(plain), lora_tensors(one)
    assert zero_history.losses == plain_history.losses
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(not torch.equal(weighted[k], theirs[k]) for k in ours if "lora_up" in k)  # W = 1 does differ


@pytest.mark.parametrize("target", ["flow", "base"])  # base: output preservation (test_lora_preservation)
def test_resume_with_prior_data_equals_the_uninterrupted_run(tmp_path, ckpt, data, prior, monkeypatch, target):
    kw = dict(steps=5, batch_size=2, prior_data=prior, prior_weight=1.5, prior_target=target)
    straight, straight_history = train_lora(settings(data, tmp_path / "a/x", ckpt, **kw), progress=False)
    crash_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lora(settings(data, tmp_path / "b/x", ckpt, **kw), progress=False)
    monkeypatch.undo()
    resumed, history = train_lora(settings(data, tmp_path / "b/x", ckpt, resume=True, **kw), progress=False)
    assert history.losses == straight_history.losses
    ours, theirs = lora_tensors(resumed), lora_tensors(straight)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_bad_files_of_both_folders_are_named_in_one_error(tmp_path, ckpt, data, prior):
    bad_prior = tmp_path / "bad_prior"
    bad_prior.mkdir()
    save_video(bar_clip(0), bad_prior / "nocaption.mp4", fps=8)
    (bad_prior / "broken.mp4").write_bytes(b"not a video")
    (bad_prior / "broken.txt").write_text("a bar\n")
    bad_main = write_data(tmp_path / "bad_main", clips=1)
    (bad_main / "clip0.txt").write_text("  \n")
    s = settings(bad_main, tmp_path / "x/x", ckpt, prior_data=bad_prior)
    with pytest.raises(ValueError) as caught:
        train_lora(s, progress=False)
    message = str(caught.value)
    assert f"{bad_main}: 1 of 1 files" in message and "clip0.mp4: clip0.txt is empty" in message
    assert f"{bad_prior}: 2 of 2 files" in message
    assert "nocaption.mp4: no caption" in message and "broken.mp4:" in message
    assert message.count("\n  ") == 3  # one line per bad file


def test_bad_prior_weights_are_refused(tmp_path, ckpt, data, prior, capsys):
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior weight must be a number >= 0"):
            LoraSettings(data, str(tmp_path / "x"), prior_data=prior, prior_weight=weight)
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--out", str(tmp_path / "y"), "--prior_weight", "2"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wanflow: error: --prior_weight weighs the clips of --prior_data")


def test_the_cli_passes_the_prior_folder_and_weight_to_the_run(tmp_path, ckpt, data, prior):
    out = tmp_path / "cli/x"
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--ckpt_dir", str(ckpt), "--out", str(out), "--steps", "1"]
    argv += ["--size", "32*32", "--frames", "5", "--rank", "2", "--device", "cpu", "--expert", "low"]
    assert cli_main([*argv, "--prior_data", str(prior), "--prior_weight", "0.5"]) == 0
    with safe_open(f"{out}_low_noise.safetensors", "pt") as f:
        recorded = json.loads(f.metadata()["wanflow_settings"])
    assert recorded["prior_data"] == str(prior) and recorded["prior_weight"] == 0.5
