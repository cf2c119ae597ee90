"""The step cache's calibration: the recorded ratios are ||r_t|| / ||r_{t-1}|| per branch, the curve is found beside
the checkpoint or among the published ones, and ``wanflow calibrate-cache`` writes a curve that the plan reads back."""

import json
from types import SimpleNamespace

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.cache_curve import CURVE_FILE, Curve, RatioRecorder, load_curve, published_curve, read_curve
from wanflow.runtime.step_cache import CacheSettings
from wanflow.sampling.hooks import Step


def record(recorder: RatioRecorder, residuals: list[torch.Tensor]) -> None:
    steps = [Step(i, len(residuals), 999 - i, "dense", 4.0) for i in range(len(residuals))]
    model = SimpleNamespace(block_cache=None)
    recorder.begin(steps)
    for step, residual in zip(steps, residuals, strict=True):
        recorder.before(step, model)
        assert model.block_cache.reuse(residual) is None  # calibration never skips
        model.block_cache.store(torch.zeros_like(residual), residual)
        recorder.after(step, torch.zeros(1))
    recorder.end()
    assert model.block_cache is None


def test_recorder_measures_the_mean_token_norm_ratio_per_branch():
    # (2 branches, 3 tokens, 4 channels): token norms 2 * scale; the second step halves branch 0's and doubles
    # token 0 of branch 1 (its ratios over tokens: 2, 1, 1 -> mean 4/3)
    first = torch.ones(2, 3, 4)
    second = first.clone()
    second[0] *= 0.5
    second[1, 0] *= 2.0
    recorder = RatioRecorder()
    record(recorder, [first, second])
    record(recorder, [first, first])
    assert recorder.runs[0] == [(1.0, 1.0), pytest.approx((0.5, 4 / 3))]
    curve = recorder.curve()  # averaged over the two runs
    assert curve.ratios[0] == (1.0, 1.0) and curve.ratios[1] == pytest.approx((0.75, 7 / 6))


def test_curve_json_round_trip_and_errors(tmp_path):
    curve = Curve(((1.0, 1.0), (0.98, 0.97)), "x")
    (tmp_path / CURVE_FILE).write_text(json.dumps(curve.to_json(solver="unipc")))
    assert read_curve(tmp_path / CURVE_FILE).ratios == curve.ratios
    with pytest.raises(ValueError, match="2N numbers"):
        Curve.from_json({"steps": 3, "ratios": [1.0, 1.0]}, "bad")
    with pytest.raises(ValueError, match="positive"):
        Curve.from_json({"steps": 1, "ratios": [1.0, -1.0]}, "bad")


def test_the_checkpoints_own_curve_comes_first_then_the_published_one(tmp_path):
    published = load_curve(tmp_path, "t2v-A14B")
    assert published.steps == 40 and published.ratios[26] == (0.65523, 0.65252)  # the dip at the expert switch
    assert published_curve("i2v-A14B").ratios[15] == (0.91076, 0.91046)
    assert published_curve("ti2v-5B").steps == 50
    (tmp_path / CURVE_FILE).write_text(json.dumps({"steps": 1, "ratios": [1.0, 1.0]}))
    assert load_curve(tmp_path, "t2v-A14B").steps == 1
    with pytest.raises(ValueError, match="wanflow calibrate-cache"):
        load_curve(tmp_path / "elsewhere", "t2v-lora-task")


def test_calibrate_cache_writes_a_curve_the_plan_reads_back(tmp_path, capsys):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    small = ["--size", "64*64", "--frame_num", "5", "--sample_steps", "12"]
    code = main(["calibrate-cache", "--ckpt_dir", str(ckpt), "--task", "t2v-A14B", "--prompts", "a", "b", *small])
    assert code == 0 and f"wrote {ckpt / CURVE_FILE}: 12 steps" in capsys.readouterr().out
    stored = json.loads((ckpt / CURVE_FILE).read_text())
    assert stored["task"] == "t2v-A14B" and stored["solver"] == "unipc" and stored["shift"] == 12.0
    assert stored["steps"] == 12 and len(stored["ratios"]) == 24 and stored["ratios"][:2] == [1.0, 1.0]
    # the same two runs, recorded here: the file holds their mean
    pipe = WanPipeline.from_pretrained(ckpt)
    recorder = RatioRecorder()
    for i, prompt in enumerate(["a", "b"]):
        pipe(prompt, seed=i, hooks=[recorder], size=(64, 64), frames=5, steps=12)
    assert stored["ratios"] == pytest.approx([r for pair in recorder.curve().ratios for r in pair], abs=1e-5)
    assert pipe.step_cache(CacheSettings()).curve == read_curve(ckpt / CURVE_FILE)
