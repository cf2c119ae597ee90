"""A real server process on a free localhost port, on tiny official-layout checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.server import postgres
from tests.tiny.checkpoint import TINY_DITS, write_dit, write_official_checkpoint
from tests.tiny.dit import random_dit_state

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"
TASKS = ("t2v-A14B", "i2v-A14B", "ti2v-5B")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m tests.server.launcher`` in a subprocess; ``client`` talks to it with the token."""

    def __init__(self, data: Path, checkpoints: dict[str, Path], **options):
        self.data, self.checkpoints, self.options = data, checkpoints, options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        import httpx

        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def start(self) -> Server:
        cmd = [sys.executable, "-m", "tests.server.launcher", "--port", str(self.port), "--data", str(self.data)]
        cmd += ["--token", TOKEN]
        for task, folder in self.checkpoints.items():
            cmd += ["--ckpt", f"{task}={folder}"]
        for name, value in self.options.items():
            cmd += [f"--{name}", str(value)]
        log = open(self.data / "server.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {(self.data / 'server.log').read_text()[-3000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:  # not listening yet
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start within 60 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, job_id: str, statuses=("done", "failed", "cancelled"), timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/api/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {task: write_official_checkpoint(root / task, task) for task in TASKS}


@pytest.fixture(scope="session")
def server(tmp_path_factory, checkpoints):
    """Shared by most tests: every step takes at least 0.03 s, so a 20-step job runs long enough to cancel. Its
    access log is on (in ``data/server.log``), for the tests of what it shows."""
    srv = Server(tmp_path_factory.mktemp("data"), checkpoints, step_delay=0.03, access_log=1).start()
    yield srv
    srv.stop()


def write_deep_small_t2v(root: Path, layers: int = 8) -> Path:
    """A tiny t2v checkpoint whose experts have ``layers`` blocks (the usual tiny ones have 2), and which says, as a
    built-in one does, that its model was trained at 32x32 and 5 frames."""
    write_official_checkpoint(root, "t2v-A14B")
    cfg = TINY_DITS["t2v-A14B"].replace(num_layers=layers)
    for seed, expert in enumerate(("high_noise_model", "low_noise_model")):
        shutil.rmtree(root / expert)
        write_dit(cfg, random_dit_state(cfg, seed), root / expert)
    defaults = {"size": [32, 32], "sizes": [[32, 32]], "frames": 5, "steps": 3}
    (root / "wanflow.json").write_text(json.dumps({"task": "t2v-A14B", "defaults": defaults}))
    return root


@pytest.fixture(scope="session")
def slow_server(tmp_path_factory):
    """One task (t2v) on a model of 8 blocks, each taking at least 0.25 s: a step takes over 2 s. Trained (its
    ``wanflow.json`` says) at 32x32 and 5 frames."""
    checkpoint = write_deep_small_t2v(tmp_path_factory.mktemp("ckpt-deep"))
    srv = Server(tmp_path_factory.mktemp("data-slow"), {"t2v-A14B": checkpoint}, block_delay=0.25).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for the session: ``WANFLOW_TEST_POSTGRES`` (``.ci/run`` starts one), else a
    throwaway one started here; skipped with the reason when neither psycopg nor the binaries are installed."""
    pytest.importorskip("psycopg", reason="the PostgreSQL tests need psycopg (pip install 'wanflow[queue]')")
    url = os.environ.get("WANFLOW_TEST_POSTGRES")
    if url:
        yield url
        return
    if postgres.bin_dir() is None:
        pytest.skip("no PostgreSQL binaries (apt-get install postgresql, or set WANFLOW_PG_BIN); .ci/run installs them")
    # Not under pytest's 0700 folders: the server runs as the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="wanflow-pg-"))
    try:
        yield postgres.start(folder)
    finally:
        postgres.stop(folder)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty database of the session's server."""
    return postgres.new_database(postgres_server, f"test_{uuid.uuid4().hex[:12]}")


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (no browser download); skips with the reason where either is
    missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the browser test")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()
