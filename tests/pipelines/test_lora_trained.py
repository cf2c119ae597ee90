"""A LoRA trained by ``train-lora`` gives the same frames in wanflow (``load_lora`` per expert, beside or merged) and
in diffusers' ``load_lora_weights`` (``load_into_transformer_2`` for the low-noise file), on a tiny checkpoint."""

import logging

import pytest

from tests.pipelines import test_lora
from tests.pipelines.test_lora import PROMPT, RUN, diffusers_frames
from tests.tiny.checkpoint import write_both_layouts
from tests.training.lora_helpers import settings, write_data
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.training.lora import train_lora


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    write_both_layouts(root, "t2v-A14B", seed=11)
    return root


def test_a_trained_lora_gives_the_same_frames_in_wanflow_and_diffusers(ckpt, tmp_path, monkeypatch):
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    data = write_data(tmp_path / "data")
    s = settings(data, tmp_path / "out/bar", ckpt / "official", steps=20, lr=2e-2, checkpoint_every=0)
    paths, _ = train_lora(s, progress=False)
    pipe = WanPipeline.from_pretrained(ckpt / "official", device="cpu")
    noise = pipe.noise((16, 2, 8, 8), seed=3)
    base = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    for expert, path in paths.items():
        pipe.load_lora(path, expert=expert, name=f"bar-{expert}")
    ours = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    pipe.unload_lora()
    for expert, path in paths.items():
        pipe.load_lora(path, expert=expert, name=f"bar-{expert}", merge=True)
    merged = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    theirs = diffusers_frames(ckpt, tmp_path / "out/bar_high_noise.safetensors", ("high",), noise)
    both = diffusers_frames_both(ckpt, paths, noise, monkeypatch)
    assert (ours - base).abs().max() > 0.1  # the LoRA changes the picture
    assert (merged - ours).abs().max() <= 1e-5
    assert (both - ours).abs().max() <= 1e-4  # the pipelines differ by ~1.6e-5 without a LoRA
    assert (theirs - ours).abs().max() > 1e-3  # the low-noise file matters too


def diffusers_frames_both(ckpt, paths, noise, monkeypatch):
    """diffusers with the high-noise file in ``transformer`` and the low-noise one in ``transformer_2``."""
    original = test_lora.diffusers_pipe

    def pipe_with_both(*args):
        theirs = original(*args)
        theirs.load_lora_weights(str(paths["high"]), adapter_name="high")
        theirs.load_lora_weights(str(paths["low"]), adapter_name="low", load_into_transformer_2=True)
        return theirs

    monkeypatch.setattr(test_lora, "diffusers_pipe", pipe_with_both)
    return test_lora.diffusers_frames(ckpt, paths["high"], (), noise)
