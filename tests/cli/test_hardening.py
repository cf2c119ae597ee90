"""The first hour of a new user (issue 21): every way a request cannot succeed is one line and exit code 2, before
the work when it can be known before (sizes that cannot fit, a device that is not there, broken configs), at the
first step when it cannot (NaN weights); a killed run's temporaries are removed before the next write."""

import json
import os
import shutil

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.checkpoints.io import read_folder, write_folder
from wanflow.cli import main
from wanflow.pipelines import guards
from wanflow.pipelines.pipeline import WanPipeline

FAST = ["--size", "64*64", "--frame_num", "5", "--sample_steps", "2", "--base_seed", "3"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


def run_main(capsys, *args):
    capsys.readouterr()
    try:
        code = main(["generate", *args])
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]


def refused(capsys, tmp_path, *args) -> str:
    """The one error line of a run that must be refused with exit code 2 and write nothing."""
    code, errors = run_main(capsys, "x", *args, "--save_file", str(tmp_path / "o.mp4"))
    assert code == 2 and len(errors) == 1, errors
    assert not [p for p in os.listdir(tmp_path) if p.startswith((".o.mp4", "o.mp4"))]
    return errors[0]


def test_a_size_no_machine_holds_is_refused(ckpt, tmp_path, capsys):
    line = refused(capsys, tmp_path, "--ckpt_dir", str(ckpt), "--size", "100000*100000")
    assert line.startswith("wanflow: error: this request needs at least ") and "GiB of RAM but" in line


def test_builtin_4096_by_81_is_refused_before_any_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(guards, "available_memory", lambda device: 16 * guards.GIB)
    monkeypatch.setattr(WanPipeline, "encode_prompts", lambda *a: pytest.fail("started the work"))
    line = refused(capsys, tmp_path, "--size", "4096*4096", "--frame_num", "81")  # the built-in t2v model
    assert "but 16.0 GiB is free (1376256 DiT tokens" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there(tmp_path, capsys):
    missing = ["--ckpt_dir", str(tmp_path / "nowhere")]  # the device is checked before the checkpoint
    assert "device cuda is not available" in refused(capsys, tmp_path, *missing, "--device", "cuda")
    line = refused(capsys, tmp_path, *missing, "--device", "gpu0")
    assert line == "wanflow: error: unknown device 'gpu0': use cpu, cuda or cuda:N (CLI: --device)"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_heads", 0, "num_heads must be a whole number >= 1, got 0"),
        ("text_len", -1, "text_len must be a whole number >= 1, got -1"),
        ("eps", "x", "eps must be a positive number, got 'x'"),
        ("dim", "wide", "dim must be a whole number >= 1, got 'wide'"),
    ],
)
def test_a_broken_config_json_names_file_and_field(ckpt, tmp_path, capsys, field, value, message):
    broken = shutil.copytree(ckpt, tmp_path / "ckpt")
    config = broken / "high_noise_model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), field: value}))
    assert refused(capsys, tmp_path, "--ckpt_dir", str(broken), *FAST) == f"wanflow: error: {config}: {message}"


def test_integer_weights_are_one_line(ckpt, tmp_path, capsys):
    broken = shutil.copytree(ckpt, tmp_path / "ckpt")
    state = read_folder(broken / "low_noise_model")
    state["head.head.weight"] = state["head.head.weight"].to(torch.int32)
    write_folder(state, broken / "low_noise_model", max_shard_bytes=40_000)
    line = refused(capsys, tmp_path, "--ckpt_dir", str(broken), *FAST)
    assert line.endswith("head.head.weight is stored as torch.int32; only floating-point weights can be loaded")


def test_nan_weights_are_an_error_not_a_black_video(ckpt, tmp_path, capsys):
    broken = shutil.copytree(ckpt, tmp_path / "ckpt")
    for expert in ("high_noise_model", "low_noise_model"):
        state = {k: torch.full_like(v, float("nan")) for k, v in read_folder(broken / expert).items()}
        write_folder(state, broken / expert, max_shard_bytes=40_000)
    line = refused(capsys, tmp_path, "--ckpt_dir", str(broken), *FAST)
    assert line.startswith("wanflow: error: the latents hold NaN or Inf after the first step (expert 'high')")


def test_running_out_of_memory_anyway_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")

    monkeypatch.setattr(WanPipeline, "__call__", oom)
    line = refused(capsys, tmp_path, "--ckpt_dir", str(ckpt), *FAST)
    assert line.startswith("wanflow: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB); try")
    monkeypatch.setattr(WanPipeline, "__call__", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not dressed up as memory
        main(["generate", "x", "--ckpt_dir", str(ckpt), *FAST, "--save_file", str(tmp_path / "o.mp4")])


def test_empty_negative_prompt_and_stale_temps_of_the_same_output(ckpt, tmp_path, capsys):
    import av

    stale, other = tmp_path / ".o.mp4.abcd1234.mp4", tmp_path / ".p.mp4.abcd1234.mp4"
    for path in (stale, other):
        path.write_bytes(b"left by a killed run")
    out = tmp_path / "o.mp4"
    args = ["x", "--ckpt_dir", str(ckpt), *FAST, "--negative_prompt", "", "--save_file", str(out)]
    assert main(["generate", *args]) == 0
    assert not stale.exists() and other.exists()  # only the temporaries of this output
    with av.open(str(out)) as container:
        assert container.metadata["negative_prompt"] == ""


def test_a_size_outside_the_trained_ones_is_warned_about_once(tmp_path, caplog):
    """The check before the loading warns; the pipeline's own resolve of the same options does not repeat it."""
    args = ["x", "--size", "96*64", "--frame_num", "5", "--sample_steps", "2", "--save_file", str(tmp_path / "o.mp4")]
    with caplog.at_level("WARNING"):
        assert main(["generate", *args]) == 0
    warned = [r.getMessage() for r in caplog.records if "quality may suffer" in r.getMessage()]
    assert warned == ["size 96*64 is outside the sizes t2v-A14B was trained at (64*64); quality may suffer"]
