"""Distributed inference on CPU with gloo: every parallel layout gives the single-process result.

The ranks are separate processes started with the torchrun environment (``tests/runtime/dist_worker.py``); one launch
per world size runs every check, each rank compares against its own single-process run. Collectives time out after
60 s and the launch is killed after ``LAUNCH_TIMEOUT_S``, so nothing can hang.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.tiny.dit import TINY_T2V, random_dit
from wanflow.runtime.distributed import check_layout, init_from_env
from wanflow.runtime.sequence_parallel import parallelize_sequence

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 400  # two busy cores shared by 4 ranks: the 4-rank launch takes minutes
TOL = 1e-5
CHECKS_2 = [
    "sp_t2v",
    "sp_ti2v",
    "cfg_t2v",
    "cfg_ti2v",
    "fsdp_t2v",
    "fsdp_sp_ti2v",
    "t5_fsdp",
    "vae",
    "vae_split",
    "vae_split_auto",
    "ring",
    "sp_t2v_heads3",
    "sp_ti2v_heads3",
    "pipeline_t2v",
    "pipeline_ti2v",
    "pipeline_interrupt",
    "errors",
]
CHECKS_4 = [
    "sp_t2v",
    "cfg_sp_fsdp_t2v",
    "cfg_sp_ti2v",
    "ring",
    "sp_t2v_heads2",
    "sp_t2v_heads3",
    "vae_split",
    "vae_split_auto",
    "pipeline_t2v",  # the tiny DiT has 2 heads: Ulysses 2 x ring 2
]
REPORTS = {"errors", "vae_split", "vae_split_auto"}  # checks that return a dict, asserted by their own tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, checks: list[str], out: Path) -> list[dict]:
    """Start ``world_size`` ranks as torchrun would; return each rank's results."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    base.update(WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.runtime.dist_worker", str(out), *checks],
            cwd=ROOT,
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world_size)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=LAUNCH_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{world_size}-rank launch did not finish within {LAUNCH_TIMEOUT_S} s")
    for r, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("dist2")
    return launch(2, CHECKS_2, out), out


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> list[dict]:
    return launch(4, CHECKS_4, tmp_path_factory.mktemp("dist4"))


@pytest.mark.parametrize("check", [c for c in CHECKS_2 if c not in REPORTS])
def test_two_ranks_match_one_process(two, check):
    results, _ = two
    for rank, res in enumerate(results):
        assert res[check] <= TOL, f"rank {rank}: {check} differs from one process by {res[check]}"


@pytest.mark.parametrize("check", [c for c in CHECKS_4 if c not in REPORTS])
def test_four_ranks_match_one_process(four, check):
    for rank, res in enumerate(four):
        assert res[check] <= TOL, f"rank {rank}: {check} differs from one process by {res[check]}"


@pytest.mark.parametrize("world", ["two", "four"])
@pytest.mark.parametrize("check", ["vae_split", "vae_split_auto"])
def test_vae_tiles_of_one_clip_split_over_ranks(request, world, check):
    results = request.getfixturevalue(world)
    results = results[0] if world == "two" else results
    reports = [r[check] for r in results]
    for rank, report in enumerate(reports):
        assert report["diff"] <= TOL, f"rank {rank}: {check} differs from one process by {report['diff']}"
        assert report["progress"] == [0, 1]  # every latent frame reported once, in order, on every rank
    calls = [report["tail_calls"] for report in reports]
    assert sum(calls) == reports[0]["all_calls"]  # every tile-frame decoded once, somewhere
    assert 0 < max(calls) < sum(calls)  # each rank did only part of the work


def test_seed_from_rank0_and_only_rank0_writes(two):
    results, out = two
    assert [r["seed"] for r in results] == [100, 100]  # each rank asked for 100 + rank
    assert results[0]["drawn_seed"] == results[1]["drawn_seed"] >= 0  # -1: one random seed for all
    assert [r["top_seed"] for r in results] == [2**64 - 1, 2**64 - 1]  # (ComfyUI's largest seed, rank 0's)
    assert sorted(p.name for p in out.glob("written_by_rank*")) == ["written_by_rank0"]


def test_impossible_layouts_are_clear_errors(two):
    errors = two[0][0]["errors"]
    assert "needs at least 2 tokens" in errors["tokens"]
    assert "before FSDP" in errors["fsdp_first"]
    assert "WORLD_SIZE=2" in errors["ulysses_size"] and "--nproc_per_node 4" in errors["ulysses_size"]
    assert "WORLD_SIZE=2" in errors["layout"]


def test_check_layout():
    check_layout(8, ulysses_size=4, cfg_size=2)
    check_layout(16, ulysses_size=16)  # e.g. 24 heads: Ulysses 8 x ring 2
    with pytest.raises(ValueError, match="must equal the number of processes"):
        check_layout(8, ulysses_size=8, cfg_size=2)
    with pytest.raises(ValueError, match="cfg_size must be 1 or 2"):
        check_layout(3, ulysses_size=1, cfg_size=3)


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_env(seed=7)
    assert (ctx.rank, ctx.world_size, ctx.is_distributed, ctx.is_rank0, ctx.seed) == (0, 1, False, True, 7)


def test_sequence_parallel_model_is_the_plain_model_on_one_rank(tmp_path):
    """The transform swaps no module and keeps every key; over one rank its forward is the plain forward."""
    plain, sharded = random_dit(TINY_T2V, 5), random_dit(TINY_T2V, 5)
    modules = dict(sharded.named_modules())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert parallelize_sequence(sharded) is sharded
        assert dict(sharded.named_modules()) == modules and sharded.state_dict().keys() == plain.state_dict().keys()
        x, t = torch.randn(1, 16, 2, 4, 6), torch.tensor([700])
        context = torch.randn(1, 5, TINY_T2V.text_dim)
        with torch.no_grad():
            assert torch.equal(sharded(x, t, context), plain(x, t, context))
    finally:
        dist.destroy_process_group()
