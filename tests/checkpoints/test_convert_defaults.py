"""``wanflow convert`` keeps what a checkpoint says besides its tensors: the sampling defaults in ``wanflow.json`` and
the DiT's context length, so a converted built-in model makes the frames the original makes, in both directions."""

import json

import pytest
import torch

from wanflow.builtin import builtin_checkpoint
from wanflow.checkpoints.convert import convert_checkpoint
from wanflow.checkpoints.load import dit_config
from wanflow.checkpoints.maps.dit import TEXT_LEN_KEY
from wanflow.pipelines.pipeline import WanPipeline


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    original = builtin_checkpoint("t2v-A14B")
    convert_checkpoint(original, root / "diffusers")
    convert_checkpoint(root / "diffusers", root / "official")
    return {"original": original, "diffusers": root / "diffusers", "official": root / "official"}


def test_wanflow_json_and_text_len_survive_both_ways(converted):
    original = converted["original"]
    for kind in ("diffusers", "official"):
        assert (converted[kind] / "wanflow.json").read_bytes() == (original / "wanflow.json").read_bytes()
    transformer = json.loads((converted["diffusers"] / "transformer" / "config.json").read_text())
    assert transformer[TEXT_LEN_KEY] == 32
    assert dit_config(converted["diffusers"] / "transformer_2", "diffusers").text_len == 32
    for expert in ("high_noise_model", "low_noise_model"):
        back = (converted["official"] / expert / "config.json").read_text()
        assert json.loads(back) == json.loads((original / expert / "config.json").read_text())


def test_diffusers_still_loads_the_transformer(converted):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(converted["diffusers"] / "transformer")
    assert model.config.num_attention_heads == 2 and model.config[TEXT_LEN_KEY] == 32


def test_published_diffusers_config_keeps_the_official_512(tmp_path):
    from wanflow.checkpoints.maps.dit import dit_config_from_diffusers

    published = {"in_channels": 16, "out_channels": 16, "num_attention_heads": 40, "attention_head_dim": 128}
    assert dit_config_from_diffusers(published).text_len == 512


def test_converted_builtin_makes_the_same_frames(converted):
    videos, tasks = {}, {}
    for kind, path in converted.items():
        pipe = WanPipeline.from_pretrained(path, task="t2v-A14B")
        tasks[kind] = pipe.task
        videos[kind] = pipe("a red circle moving right", seed=3, steps=4).frames  # the checkpoint's size and frames
    assert tasks["original"].size == (64, 64) and tasks["original"].negative_prompt == ""
    assert tasks["diffusers"] == tasks["original"] == tasks["official"]
    assert videos["original"].shape == (3, 9, 64, 64)
    assert torch.equal(videos["diffusers"], videos["original"]) and torch.equal(videos["official"], videos["original"])
