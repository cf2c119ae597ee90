"""``train-lora --preserve_word TRIGGER=CLASS`` (differential output preservation): the prior samples are the training
clips under their captions with the trigger swapped for the class word, trained towards the frozen base's prediction;
no prior folder. The swapped captions' text states are the encoder's own; clips without the trigger are left out."""

import json

import pytest
import torch
from safetensors import safe_open

from tests.training.lora_helpers import lora_tensors, settings, write_data
from wanflow.checkpoints.load import dit_config
from wanflow.cli import main as cli_main
from wanflow.training import lora as lora_training
from wanflow.training.flow import flow_matching_loss
from wanflow.training.lora import load_data, train_lora
from wanflow.training.lora_cache import Encoders
from wanflow.training.lora_preserve import swap_word
from wanflow.training.lora_settings import LoraSettings, resolve_checkpoint

CPU = torch.device("cpu")


def test_swap_word_replaces_whole_words_in_any_case():
    assert swap_word("a Zorb and a zorb, sliding", "zorb", "dog") == "a dog and a dog, sliding"
    assert swap_word("two zorbs and a zorb-like ball", "zorb", "dog") is None
    assert swap_word("the red plank", "red plank", "square") == "the square"


def test_the_prior_samples_are_the_clips_under_the_swapped_captions(tmp_path, ckpt):
    data = write_data(tmp_path / "clips", clips=3)
    (data / "clip2.txt").write_text("a bar sliding right\n")  # no trigger: not a prior sample
    s = settings(data, tmp_path / "x", ckpt, preserve_word=("zorb", "dog"))
    layout, task = resolve_checkpoint(s)
    samples, prior = load_data(s, layout, task, 16, CPU)
    assert len(samples) == 3 and len(prior) == 2
    encoder = Encoders(layout, CPU, 16).text()
    for i in range(2):
        assert prior[i].latents is samples[i].latents  # the same clips (the same tensors)
        swapped = encoder.encode([f"a dog sliding right, take {i}"])[0]
        original = encoder.encode([f"a zorb sliding right, take {i}"])[0]
        assert torch.equal(samples[i].context, original) and not torch.equal(original, swapped)
        assert torch.equal(prior[i].context, swapped)


def test_each_step_adds_the_swapped_captions_loss_against_the_base(tmp_path, ckpt, data, monkeypatch):
    calls = []

    def spy(model, x0, context, t, noise, **kw):
        calls.append((context.clone(), kw.get("teacher")))
        return flow_matching_loss(model, x0, context, t, noise, **kw)

    kw = dict(batch_size=2, expert="high", lr=3e-2)
    _, plain_history = train_lora(settings(data, tmp_path / "a/x", ckpt, steps=2, **kw), progress=False)
    monkeypatch.setattr(lora_training, "flow_matching_loss", spy)
    _, history = train_lora(settings(data, tmp_path / "b/x", ckpt, steps=2, preserve_word=("zorb", "dog"), **kw))
    assert [teacher is None for _, teacher in calls] == [True, False, True, False]  # main, then preserved
    layout, _ = resolve_checkpoint(settings(data, tmp_path / "c/x", ckpt))
    encoder = Encoders(layout, CPU, dit_config(layout.experts["high"], layout.kind).text_len).text()
    dog = {tuple(encoder.encode([f"a dog sliding right, take {i}"])[0].flatten().tolist()) for i in range(2)}
    for context, _ in calls[1::2]:
        for row in context:
            assert tuple(row[: row.abs().sum(-1).nonzero().max() + 1].flatten().tolist()) in dog
    assert history.losses[0] == plain_history.losses[0] and history.losses[1] != plain_history.losses[1]


def test_bad_uses_are_refused_in_one_line(tmp_path, ckpt, data, capsys):
    out = str(tmp_path / "x")
    for kw, message in [
        (dict(preserve_word=("zorb", "Zorb")), "swaps the trigger for another word"),
        (dict(preserve_word=("zorb", " ")), "is TRIGGER=CLASS"),
        (dict(preserve_word=("zorb", "dog"), prior_data=data), "drop --prior_data"),
        (dict(preserve_word=("zorb", "dog"), prior_target="flow"), "drop --prior_target flow"),
    ]:
        with pytest.raises(ValueError, match=message):
            LoraSettings(data, out, **kw)
    with pytest.raises(ValueError, match="no caption holds the word 'plank'"):
        train_lora(settings(data, tmp_path / "y/x", ckpt, preserve_word=("plank", "dog")), progress=False)
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--ckpt_dir", str(ckpt), "--out", str(tmp_path / "z/x")]
    argv += ["--steps", "1", "--size", "32*32", "--frames", "5", "--rank", "2", "--device", "cpu", "--expert", "low"]
    with pytest.raises(SystemExit):
        cli_main([*argv, "--preserve_word", "zorb"])
    assert "--preserve_word looks like TRIGGER=CLASS" in capsys.readouterr().err
    assert cli_main([*argv, "--preserve_word", " zorb = dog "]) == 0
    with safe_open(tmp_path / "z/x_low_noise.safetensors", "pt") as f:
        recorded = json.loads(f.metadata()["wanflow_settings"])
    assert recorded["preserve_word"] == ["zorb", "dog"] and recorded["prior_data"] is None
    ups = [v for k, v in lora_tensors({"low": tmp_path / "z/x_low_noise.safetensors"}).items() if "lora_up" in k]
    assert ups and all(up.abs().sum() > 0 for up in ups)  # one step moved every up factor off its zero start
