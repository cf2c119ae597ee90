"""``--cache`` on the command line: generate takes it into the request (and into the file's metadata), a bad value is
a one-line error before any loading, and evaluate passes it to every generation."""

import argparse

import av

from tests.evaluation.test_evaluate import RecordingPipe
from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main
from wanflow.cli.evaluate import add_arguments as add_evaluate_arguments
from wanflow.cli.evaluate import run as run_evaluate


def test_generate_with_and_without_a_valid_cache(tmp_path, capsys):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    common = ["generate", "x", "--ckpt_dir", str(ckpt), "--size", "64*64", "--frame_num", "5", "--sample_steps", "3"]
    assert main([*common, "--save_file", str(tmp_path / "v.mp4"), "--cache", "magcache:0.05"]) == 0
    with av.open(str(tmp_path / "v.mp4")) as container:
        assert container.metadata["cache"] == "magcache:0.05"
    capsys.readouterr()
    assert main([*common, "--save_file", str(tmp_path / "w.mp4"), "--cache", "teacache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wanflow: error: unknown step cache 'teacache'" in err
    assert not (tmp_path / "w.mp4").exists()


def test_evaluate_generates_with_the_cache(monkeypatch, capsys):
    pipe = RecordingPipe()
    monkeypatch.setattr("wanflow.pipelines.pipeline.WanPipeline.from_pretrained", lambda *a, **k: pipe)
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert run_evaluate(parser.parse_args(["--cases", "t2v", "--per_combo", "1", "--cache", "magcache:0.1"])) == 0
    assert pipe.sampling == [{"cache": "magcache:0.1"}] * 9
    assert "held-out combinations, cache magcache:0.1" in capsys.readouterr().out
