"""A config.json that holds nonsense, weights that are not floats, a .pth that holds code: one CheckpointError that
names the file and the field (or tensor), never a traceback from deep inside the model."""

import datetime
import json

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, random_dit_state
from tests.tiny.vae import TINY_VAE21, random_vae_state
from wanflow.checkpoints.convert import convert_checkpoint
from wanflow.checkpoints.io import CheckpointError, read_weights, write_folder
from wanflow.checkpoints.load import load_components, load_dit, load_text_encoder, load_vae
from wanflow.configs import DiTConfig, T5Config, VAEConfig


def write_dit(folder, config: dict, state=None):
    write_folder(state or random_dit_state(TINY_T2V), folder)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_heads", 0, "num_heads must be a whole number >= 1, got 0"),
        ("text_len", -1, "text_len must be a whole number >= 1, got -1"),
        ("eps", "x", "eps must be a positive number, got 'x'"),
        ("eps", 0, "eps must be a positive number, got 0"),
        ("dim", "abc", "dim must be a whole number >= 1, got 'abc'"),
        ("dim", 24.5, "dim must be a whole number >= 1, got 24.5"),
        ("num_layers", True, "num_layers must be a whole number >= 1, got True"),
        ("model_type", 3, "model_type must be a string (t2v, i2v or ti2v), got 3"),
    ],
)
def test_bad_official_dit_config_names_file_and_field(tmp_path, field, value, message):
    folder = write_dit(tmp_path / "dit", {**TINY_T2V.to_json(), field: value})
    with pytest.raises(CheckpointError) as caught:
        load_dit(folder)
    assert str(caught.value) == f"{folder}/config.json: {message}"


def test_config_json_must_be_an_object(tmp_path):
    folder = write_dit(tmp_path / "dit", [1, 2])
    with pytest.raises(CheckpointError, match=r"config\.json must hold a JSON object of config fields, got list"):
        load_dit(folder)


@pytest.fixture(scope="module")
def diffusers_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    convert_checkpoint(write_official_checkpoint(root / "official", "t2v-A14B"), root / "diffusers")
    return root / "diffusers"


def edit_config(folder, **changes):
    path = folder / "config.json"
    original = path.read_text()
    path.write_text(json.dumps({**json.loads(original), **changes}))
    return original


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("transformer", {"num_attention_heads": 0}, "num_attention_heads must be a whole number >= 1, got 0"),
        ("transformer", {"patch_size": 2}, "patch_size must be a list of 3, got 2"),
        ("transformer", {"eps": "x"}, "eps must be a positive number, got 'x'"),
        ("transformer", {"_wanflow_text_len": -1}, "text_len must be a whole number >= 1, got -1"),
        ("vae", {"z_dim": "x"}, "z_dim must be a whole number >= 1, got 'x'"),
        ("vae", {"dim_mult": 4}, "dim_mult must be a list, got 4"),
        ("vae", {"temperal_downsample": [True]}, "temporal_downsample must be a list of 3, got (True,)"),
        ("vae", {"latents_std": [0.0] * 16}, "latents_std must be positive, got 0.0"),
        ("text_encoder", {"num_heads": 0}, "num_heads must be a whole number >= 1, got 0"),
    ],
)
def test_bad_diffusers_config_names_file_and_field(diffusers_ckpt, component, changes, message):
    folder = diffusers_ckpt / component
    original = edit_config(folder, **changes)
    try:
        with pytest.raises(CheckpointError) as caught:
            load_components(diffusers_ckpt)
    finally:
        (folder / "config.json").write_text(original)
    text = str(caught.value)
    assert str(folder) in text and text.endswith(message), text


def test_configs_check_their_fields_themselves():
    with pytest.raises(ValueError, match="num_heads must be a whole number >= 1, got 0"):
        DiTConfig(num_heads=0)
    with pytest.raises(ValueError, match=r"patch_size\[1\] must be a whole number >= 1, got 0"):
        DiTConfig(patch_size=(1, 0, 2))
    with pytest.raises(ValueError, match=r"dim_mult\[1\] must be a whole number >= 1, got 0"):
        VAEConfig(dim_mult=(1, 0, 4, 4))
    with pytest.raises(ValueError, match="eps must be a positive number, got nan"):
        T5Config(eps=float("nan"))
    with pytest.raises(ValueError, match="dim_attn 64 is not divisible by num_heads 3"):
        T5Config(dim=64, dim_attn=64, num_heads=3)
    assert T5Config(vocab_size=0).vocab_size == 0  # a recipe's placeholder until its tokenizer exists


def test_integer_weights_are_refused_with_the_tensor_named(tmp_path):
    state = random_dit_state(TINY_T2V)
    state["blocks.0.ffn.0.weight"] = state["blocks.0.ffn.0.weight"].to(torch.int32)
    folder = write_dit(tmp_path / "dit", TINY_T2V.to_json(), state)
    with pytest.raises(CheckpointError) as caught:
        load_dit(folder)
    assert str(caught.value) == (
        f"DiT in {folder}: blocks.0.ffn.0.weight is stored as torch.int32; only floating-point weights can be loaded"
    )
    vae = random_vae_state(TINY_VAE21)
    vae["conv1.weight"] = vae["conv1.weight"].to(torch.int32)
    torch.save(vae, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match=r"conv1\.weight is stored as torch\.int32"):
        load_vae(tmp_path / "Wan2.1_VAE.pth")


def test_text_encoder_config_errors_name_the_file(diffusers_ckpt):
    folder = diffusers_ckpt / "text_encoder"
    original = (folder / "config.json").read_text()
    (folder / "config.json").write_text("[]")
    try:
        with pytest.raises(CheckpointError, match="must hold a JSON object"):
            load_text_encoder(folder, diffusers_ckpt / "tokenizer", kind="diffusers")
    finally:
        (folder / "config.json").write_text(original)


def test_a_pth_holding_code_is_refused_without_torch_advice(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.ones(2), "made": datetime.date(2025, 1, 1)}, path)
    with pytest.raises(CheckpointError) as caught:
        read_weights(path)
    text = str(caught.value)
    assert text.startswith(f"cannot read {path}: besides tensors it holds pickled Python objects such as datetime.date")
    assert "code which loading would run, so wanflow will not load it" in text
    assert "weights_only" not in text and "\n" not in text
