"""The GPU suite's dry run (CPU, tiny shapes) on every CI run, so the one prepared device command cannot rot between
the rare runs on a lent GPU; and its runner's promises: an error or a skip does not stop the suite, the budget does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STAGES = {"0", "1", "2a", "2b", "3a", "3b", "4", "4b", "5a", "5b", "5c"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str]:
    """One dry run in a fresh process (the suite arms an alarm and sets threads), importing this tree's wanflow."""
    out = tmp_path_factory.mktemp("gpu-suite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def rows(data: dict, stage: str) -> list[dict]:
    return [r for r in data["rows"] if r["stage"] == stage]


def test_every_stage_ran_with_finite_figures(dry_run):
    data, md = dry_run
    assert {r["stage"] for r in data["rows"]} == STAGES
    for row in data["rows"]:
        assert row["status"] == "ok", row
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0, row
        assert math.isfinite(row["tflops"]) and row["tflops"] > 0, row
        assert f"| {row['stage']} | {row['what']} | ok |" in md
    assert set(data["meta"]["stage_seconds"]) == STAGES
    assert [len(rows(data, s)) for s in sorted(STAGES)] == [1, 2, 2, 2, 2, 2, 3, 1, 1, 2, 2]


def test_diffusers_matches_on_shared_weights(dry_run):
    data, _ = dry_run
    theirs = [r for r in data["rows"] if "diffusers" in r["what"]]
    assert len(theirs) == 3  # A14B 480p, 720p, TI2V-5B
    for row in theirs:
        assert row["rel_err"] < 1e-4, row  # float32: the same function on the same weights
        assert row["shared"] == 1.0, row  # all float32: no weight is copied for diffusers


def test_compile_and_fp8_errors(dry_run):
    data, _ = dry_run
    errors = {r["what"].split(": ")[-1]: r["rel_err"] for r in rows(data, "3a") + rows(data, "3b")}
    assert errors["fp32 + compile"] < 1e-5
    fp8 = errors["fp8 e4m3 weights, fp32 compute"]
    assert 1e-4 < fp8 < 0.1  # e4m3 keeps 3 mantissa bits: a few percent, never nothing
    assert errors["fp8 + compile"] == pytest.approx(fp8, rel=1e-3)


def test_memory_policies_and_tiled_decode(dry_run):
    data, _ = dry_run
    policies = [r["what"].split(": ")[-1] for r in rows(data, "4")]
    assert policies == ["resident", "model offload", "block streaming, 24 GB cap"]
    tiled = rows(data, "5b")[-1]
    assert "tiles" in tiled["what"] and tiled["rel_err"] < 1e-5  # the tiled decode is exact
    lora = rows(data, "5c")[-1]
    assert "LoRA beside" in lora["what"] and 1e-3 < lora["rel_err"] < 1.0  # the LoRA moves the output, not wildly


@pytest.fixture()
def suite_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_suite

    return gpu_suite


def test_runner_records_errors_skips_and_the_budget(suite_module, tmp_path):
    gs = suite_module
    suite = gs.Suite(torch.device("cpu"), torch.float32, False, tmp_path, deadline=time.monotonic() + 60)
    ran = []

    def fail(s):
        s.keep["model"] = object()
        raise RuntimeError("CUDA out of memory")

    def cut(s):
        raise gs.BudgetExceeded

    stages = [
        gs.Stage("a", "fails", fail),
        gs.Stage("b", "too long", lambda s: ran.append("b"), fixed_s=1e6),
        gs.Stage("c", "runs", lambda s: ran.append("c")),
        gs.Stage("d", "cut", cut),
        gs.Stage("e", "after the budget", lambda s: ran.append("e")),
    ]
    gs.run_stages(suite, stages)
    assert ran == ["c"]
    statuses = [("a", "error"), ("b", "skipped"), ("d", "cut"), ("e", "skipped")]
    assert [(r["stage"], r["status"]) for r in suite.rows] == statuses
    assert "CUDA out of memory" in suite.rows[0]["note"] and suite.keep == {}
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [(r["stage"], r["status"]) for r in saved["rows"]] == statuses
