"""The queue's boundaries: ``--queue`` URLs, the ``serve`` and ``worker`` flags that go together, the database that
cannot be reached (one line, no password), and the metrics text."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.server.conftest import ROOT, free_port
from wanflow.server import cli as serve_cli
from wanflow.server import worker_cli
from wanflow.server.engines import open_store
from wanflow.server.metrics import render
from wanflow.server.sqlite_store import SqliteStore


def parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_queue_urls(tmp_path):
    for queue in (tmp_path / "a.sqlite", f"sqlite:///{tmp_path}/b.sqlite"):
        store = open_store(queue)
        assert isinstance(store, SqliteStore) and store.ENGINE == "sqlite"
        store.close()
    assert (tmp_path / "a.sqlite").is_file() and (tmp_path / "b.sqlite").is_file()
    with pytest.raises(ValueError, match=r"--queue 'mysql://db/x': give a postgresql://USER@HOST/DB URL"):
        open_store("mysql://db/x")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no_worker"], "--no_worker needs a --queue shared with workers"),
        (["--no_worker", "--queue", "postgresql://db/q", "--ckpt_dir", "x"], "give --ckpt_dir and --task to wanflow"),
        (["--no_worker", "--queue", "postgresql://db/q", "--prompt_extend_model", "m"], "prompts are extended where"),
    ],
)
def test_serve_flags_that_go_together(argv, message):
    with pytest.raises(ValueError, match=message):
        serve_cli.check_queue(parse(serve_cli, *argv))
    serve_cli.check_queue(parse(serve_cli, "--no_worker", "--queue", "postgresql://db/q"))  # fine


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lease_seconds", "0.5"], "--lease_seconds must be at least 1, got 0.5"),
        (["--max_attempts", "0"], "--max_attempts must be at least 1, got 0"),
        (["--ckpt_dir", "x", "--tasks", "t2v-A14B"], "--tasks picks built-in models"),
    ],
)
def test_worker_flags(argv, message):
    with pytest.raises(ValueError, match=message):
        worker_cli.check(parse(worker_cli, "--queue", "postgresql://db/q", *argv))
    args = parse(worker_cli, "--queue", "q", "--tasks", "t2v-A14B", "ti2v-5B")
    worker_cli.check(args)
    assert args.lease_seconds == 60.0 and args.tasks == ["t2v-A14B", "ti2v-5B"] and args.max_attempts == 2


@pytest.mark.parametrize("command", [["worker", "--tasks", "t2v-A14B"], ["serve", "--no_worker"]])
def test_an_unreachable_database_is_one_line_without_the_password(tmp_path, command):
    pytest.importorskip("psycopg", reason="needs psycopg (pip install 'wanflow[queue]')")
    url = f"postgresql://wanflow:hunter2@127.0.0.1:{free_port()}/jobs"  # nothing listens there
    cmd = [sys.executable, "-m", "wanflow", *command, "--queue", url, "--data", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("wanflow: error: cannot reach the job database postgresql://wanflow@127.0.0.1:")
    assert "hunter2" not in done.stderr


def test_metric_labels_are_escaped():
    assert render({}) == ""
    assert render({"worker": 'gpu"1\\a\nb', "model": "m"}) == '{worker="gpu\\"1\\\\a\\nb",model="m"}'


def test_a_worker_names_its_checkpoints(tmp_path):
    from tests.tiny.checkpoint import write_official_checkpoint

    t2v = write_official_checkpoint(tmp_path / "t2v", "t2v-A14B")
    ti2v = write_official_checkpoint(tmp_path / "ti2v", "ti2v-5B")
    pipelines, tasks = worker_cli.checkpoint_models([f"small={t2v}", str(ti2v)], {}, lambda pipe: pipe)
    assert list(pipelines) == ["small", "ti2v-5B"]
    assert tasks["small"].name == "t2v-A14B" and tasks["ti2v-5B"].name == "ti2v-5B"
    with pytest.raises(ValueError, match="two --ckpt_dir models are named 't2v-A14B': name them"):
        worker_cli.checkpoint_models([str(t2v), str(t2v)], {}, lambda pipe: pipe)
