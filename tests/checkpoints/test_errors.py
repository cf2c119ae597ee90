"""Every bad checkpoint gives one clear CheckpointError that names the problem."""

import json

import pytest
import torch

from tests.tiny.dit import TINY_T2V, random_dit_state
from wanflow.checkpoints.io import CheckpointError, read_pth, read_weights, write_folder
from wanflow.checkpoints.layouts import detect_layout
from wanflow.checkpoints.load import load_dit


def write_dit(folder, state, cfg=TINY_T2V):
    write_folder(state, folder)
    (folder / "config.json").write_text(json.dumps(cfg.to_json()))
    return folder


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        detect_layout(tmp_path / "nope")


def test_missing_weights_file(tmp_path):
    folder = tmp_path / "dit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_T2V.to_json()))
    with pytest.raises(CheckpointError, match="no weights"):
        load_dit(folder)


def test_missing_pth(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_pth(tmp_path / "Wan2.1_VAE.pth")


def test_missing_shard(tmp_path):
    folder = tmp_path / "dit"
    write_folder(random_dit_state(TINY_T2V), folder, max_shard_bytes=40_000)
    (folder / "config.json").write_text(json.dumps(TINY_T2V.to_json()))
    next(folder.glob("*-00002-of-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(folder)


def test_truncated_safetensors(tmp_path):
    folder = write_dit(tmp_path / "dit", random_dit_state(TINY_T2V))
    path = folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dit(folder)


def test_truncated_pth(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"a": torch.ones(2), "b": object()}, path)  # not loadable with weights_only=True
    with pytest.raises(CheckpointError, match="cannot read"):
        read_weights(path)


def test_missing_key_is_named(tmp_path):
    state = random_dit_state(TINY_T2V)
    del state["blocks.1.cross_attn.k.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.1\.cross_attn\.k\.bias'\]"):
        load_dit(write_dit(tmp_path / "dit", state))


def test_extra_key_is_named(tmp_path):
    state = random_dit_state(TINY_T2V)
    state["blocks.0.cross_attn.k_img.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks\.0\.cross_attn\.k_img\.weight'\]"):
        load_dit(write_dit(tmp_path / "dit", state))


def test_shape_mismatch_is_named(tmp_path):
    state = random_dit_state(TINY_T2V)
    state["head.head.weight"] = torch.zeros(3, TINY_T2V.dim)
    with pytest.raises(CheckpointError, match=r"shape mismatch for head\.head\.weight: checkpoint \(3, 24\)"):
        load_dit(write_dit(tmp_path / "dit", state))


def test_unknown_layout(tmp_path):
    (tmp_path / "random.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a Wan checkpoint folder"):
        detect_layout(tmp_path)


def test_bad_config_json(tmp_path):
    folder = write_dit(tmp_path / "dit", random_dit_state(TINY_T2V))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_dit(folder)


def test_one_expert_only(tmp_path):
    write_dit(tmp_path / "high_noise_model", random_dit_state(TINY_T2V))
    with pytest.raises(CheckpointError, match="low_noise_model"):
        detect_layout(tmp_path)


def test_comfyui_prefix_is_accepted(tmp_path):
    state = {f"model.diffusion_model.{k}": v for k, v in random_dit_state(TINY_T2V).items()}
    model = load_dit(write_dit(tmp_path / "dit", state))
    assert model.cfg == TINY_T2V
