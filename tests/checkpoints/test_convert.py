"""Layouts: detection, loading the same weights from both layouts, and the converter round trip."""

import subprocess
import sys

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.checkpoints.convert import convert_checkpoint
from wanflow.checkpoints.io import read_folder, read_weights
from wanflow.checkpoints.layouts import detect_layout
from wanflow.checkpoints.load import load_dit, load_text_encoder, load_vae
from wanflow.checkpoints.maps.dit import DIT_KEYMAP


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def component_states(layout):
    """Every tensor of a checkpoint folder, by component, in the file's own layout."""
    states = {f"dit.{name}": read_folder(folder) for name, folder in layout.experts.items()}
    if layout.kind == "official":
        states["vae"] = read_weights(layout.vae)
        states["t5"] = read_weights(layout.text_encoder)
    else:
        states["vae"] = read_folder(layout.vae)
        states["t5"] = read_folder(layout.text_encoder, stem="model")
    return states


@pytest.mark.parametrize("task", ["t2v-A14B", "ti2v-5B"])
def test_round_trip_official_diffusers_official_is_identity(task, tmp_path):
    src = write_official_checkpoint(tmp_path / "official", task)
    diff = convert_checkpoint(src, tmp_path / "diffusers")
    assert diff.kind == "diffusers" and diff.is_moe == (task != "ti2v-5B")
    back = convert_checkpoint(tmp_path / "diffusers", tmp_path / "back")
    assert back.kind == "official"
    a, b = component_states(detect_layout(src)), component_states(back)
    assert sorted(a) == sorted(b)
    for name in a:
        assert_same_state(a[name], b[name])
    # Tokenizer files copied unchanged.
    for f in (src / "google/umt5-xxl").iterdir():
        assert (tmp_path / "back/google/umt5-xxl" / f.name).read_bytes() == f.read_bytes()


def test_every_dit_key_mapped_exactly_once(tmp_path):
    from diffusers import WanTransformer3DModel

    from tests.models.test_dit import TINY_I2V
    from wanflow.checkpoints.maps import init_kwargs
    from wanflow.checkpoints.maps.dit import dit_config_to_diffusers
    from wanflow.models.dit import WanDiT

    with torch.device("meta"):
        ours = WanDiT(TINY_I2V).state_dict()
        kwargs = init_kwargs(dit_config_to_diffusers(TINY_I2V))
        theirs = WanTransformer3DModel(**kwargs).state_dict()
    names = DIT_KEYMAP.convert_keys(ours)
    assert sorted(names.values()) == sorted(theirs)  # onto diffusers' keys, one each
    assert DIT_KEYMAP.convert_keys(theirs, reverse=True) == {v: k for k, v in names.items()}


def test_both_layouts_load_the_same_models(tmp_path):
    src = write_official_checkpoint(tmp_path / "official", "i2v-A14B")
    convert_checkpoint(src, tmp_path / "diffusers")
    a, b = detect_layout(src), detect_layout(tmp_path / "diffusers")
    for name in ("high", "low"):
        assert_same_state(
            load_dit(a.experts[name], a.kind).state_dict(), load_dit(b.experts[name], b.kind).state_dict()
        )
    assert_same_state(load_vae(a.vae, a.kind).state_dict(), load_vae(b.vae, b.kind).state_dict())
    ta = load_text_encoder(a.text_encoder, a.tokenizer, a.kind)
    tb = load_text_encoder(b.text_encoder, b.tokenizer, b.kind)
    assert_same_state(ta.state_dict(), tb.state_dict())
    prompt = ["a green square moving up"]
    torch.testing.assert_close(ta.encode(prompt)[0], tb.encode(prompt)[0], rtol=0, atol=0)


def test_diffusers_reads_our_converted_folder(tmp_path):
    """The converted folder is a real diffusers pipeline folder: diffusers loads it with its own loaders."""
    from diffusers import WanPipeline

    src = write_official_checkpoint(tmp_path / "official", "t2v-A14B")
    convert_checkpoint(src, tmp_path / "diffusers")
    pipe = WanPipeline.from_pretrained(tmp_path / "diffusers")
    assert pipe.config.boundary_ratio == 0.875
    high = load_dit(src / "high_noise_model")
    ours = DIT_KEYMAP.forward(high.state_dict())
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(v, ours[k]), k


def test_refuses_non_empty_output_and_same_layout(tmp_path):
    src = write_official_checkpoint(tmp_path / "official", "ti2v-5B")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(src, tmp_path / "busy")
    with pytest.raises(ValueError, match="already in the official layout"):
        convert_checkpoint(src, tmp_path / "out", to="official")


def test_cli_convert_and_errors(tmp_path):
    src = write_official_checkpoint(tmp_path / "official", "ti2v-5B")
    run = [sys.executable, "-m", "wanflow", "convert", str(src), str(tmp_path / "d")]
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "diffusers layout" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "wanflow", "convert", str(tmp_path / "nope"), str(tmp_path / "e")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"wanflow: error: checkpoint folder not found: {tmp_path / 'nope'}"]
