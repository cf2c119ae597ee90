"""``evaluate_reconstruction`` scores the held-out clips through a VAE alone: exact for a lossless VAE, lower when the
VAE loses an attribute, and the command line rejects flags that contradict it."""

import argparse
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wanflow.cli.evaluate import add_evaluate_arguments, run_evaluate
from wanflow.data.shapes import HELD_OUT
from wanflow.evaluation.evaluate import evaluate_reconstruction


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


def test_vae_only_and_expert_together_are_refused():
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(["--vae_only", "--expert", "high"])
    with pytest.raises(ValueError, match="--vae_only runs no DiT"):
        run_evaluate(args)
