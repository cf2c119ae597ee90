"""``evaluate_reconstruction`` scores the held-out clips through a VAE alone: exact for a lossless VAE, lower when the
VAE loses an attribute, and the command line rejects flags that contradict it."""

import argparse
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wanflow.cli.evaluate import add_arguments as add_evaluate_arguments
from wanflow.cli.evaluate import run as run_evaluate
from wanflow.data.shapes import HELD_OUT, all_combos, combo_clips, render
from wanflow.evaluation.evaluate import evaluate_case, evaluate_reconstruction, seen_combos
from wanflow.io.video import from_uint8


class PassThroughVAE(nn.Module):
    """encode / decode as the identity, or with the colour drained to grey (``grey``)."""

    def __init__(self, grey: bool = False):
        super().__init__()
        self.grey = grey

    def encode(self, video):
        return video.clone()

    def decode(self, latents):
        return latents.mean(1, keepdim=True).expand_as(latents) if self.grey else latents


def fake_pipe(vae):
    return SimpleNamespace(vae=vae, device=torch.device("cpu"), task=SimpleNamespace(size=(48, 48), frames=9))


def test_a_lossless_vae_scores_every_attribute():
    result = evaluate_reconstruction(fake_pipe(PassThroughVAE()), per_combo=1)
    assert result.scores == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "n": len(HELD_OUT)}


def test_a_vae_that_loses_colour_loses_only_colour():
    result = evaluate_reconstruction(fake_pipe(PassThroughVAE(grey=True)), per_combo=1)
    assert result.scores["colour"] < 0.5
    assert result.scores["direction"] == 1.0


class ReadingPipe:
    """A text-to-video 'model' that reads the colour, shape and motion words of its prompt and draws them."""

    task = SimpleNamespace(size=(48, 48), frames=9)

    def __init__(self):
        self.prompts = []

    def __call__(self, prompt, image=None, seed=0):
        self.prompts.append(prompt)
        words = prompt.split()
        combo = (words[1], words[2], "still" if words[3] == "staying" else words[4])
        clip = combo_clips(seed, [combo], 1, 48, 48, 9)[0]
        return SimpleNamespace(frames=from_uint8(render(clip, 9, 48, 48)))


@pytest.mark.parametrize("short", [False, True])
def test_cases_prompt_with_or_without_the_background(short):
    pipe = ReadingPipe()
    result = evaluate_case(pipe, with_image=False, per_combo=1, short_prompts=short)
    assert result.scores == {"colour": 1.0, "shape": 1.0, "direction": 1.0, "all": 1.0, "n": len(HELD_OUT)}
    assert len(pipe.prompts) == len(HELD_OUT)
    assert all(("background" in prompt) != short for prompt in pipe.prompts), pipe.prompts


def test_vae_only_and_short_prompts_together_are_refused():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    with pytest.raises(ValueError, match="--vae_only uses no prompt"):
        run_evaluate(parser.parse_args(["--vae_only", "--short_prompts"]))


def test_vae_only_and_expert_together_are_refused():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(["--vae_only", "--expert", "high"])
    with pytest.raises(ValueError, match="--vae_only runs no DiT"):
        run_evaluate(args)


def test_seen_combos_are_a_fixed_set_of_training_combinations():
    combos = seen_combos()
    assert len(set(combos)) == 9 and not set(combos) & HELD_OUT
    assert combos == seen_combos() and combos != seen_combos(seed=1)
    with pytest.raises(ValueError, match="between 1 and"):
        seen_combos(n=len(all_combos()))


class RecordingPipe(ReadingPipe):
    """A ReadingPipe that also records the sampler keywords it was called with."""

    def __init__(self):
        super().__init__()
        self.sampling = []

    def __call__(self, prompt, image=None, seed=0, **sampling):
        self.sampling.append(sampling)
        return super().__call__(prompt, image=image, seed=seed)


def test_command_line_scores_seen_combinations_with_given_sampler_settings(monkeypatch, capsys):
    pipe = RecordingPipe()
    monkeypatch.setattr("wanflow.pipelines.pipeline.WanPipeline.from_pretrained", lambda *a, **k: pipe)
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = ["--cases", "t2v", "--per_combo", "1", "--seen", "--sample_guide_scale", "3,5", "--sample_steps", "7"]
    assert run_evaluate(parser.parse_args(args)) == 0
    assert pipe.prompts == [clip.prompt for clip in combo_clips(0, seen_combos(), 1, 48, 48, 9)]
    assert pipe.sampling == [{"steps": 7, "guide_scale": (3.0, 5.0)}] * 9
    out = capsys.readouterr().out
    assert "100.0%" in out and "combinations seen in training, steps 7, guide_scale 3.0,5.0" in out


def test_vae_only_and_sampler_settings_together_are_refused():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    with pytest.raises(ValueError, match="no sampler"):
        run_evaluate(parser.parse_args(["--vae_only", "--sample_steps", "4"]))


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_per_combo_below_one_is_a_usage_error(value, capsys):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--per_combo", value])
    assert exit_.value.code == 2 and f"expected a whole number >= 1, got '{value}'" in capsys.readouterr().err
