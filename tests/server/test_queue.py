"""API servers and workers sharing a PostgreSQL queue, end to end: real ``wanflow serve --no_worker`` and ``wanflow
worker`` processes on the built-in models, a real PostgreSQL server, one shared data folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

for _name in ("httpx", "fastapi", "uvicorn", "psycopg"):
    pytest.importorskip(
        _name, reason="the queue tests need the server and queue extras (pip install wanflow[server,queue])"
    )

import httpx  # noqa: E402

from tests.server.conftest import ROOT, free_port  # noqa: E402
from tests.server.test_server import events  # noqa: E402
from wanflow.server.engines import open_store  # noqa: E402

LEASE = 3.0  # seconds: a killed worker's job is back in the queue within this
QUICK = {"task": "t2v-A14B", "prompt": "a lighthouse", "width": 32, "height": 32, "frames": 1, "steps": 1}
LONG = QUICK | {"width": 128, "height": 128, "frames": 9, "steps": 30}  # seconds: time to kill its worker mid-run


class Process:
    """``python -m wanflow ARGS`` with its output in ``log``."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log = args, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Process:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wanflow", *self.args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(30)


class Api(Process):
    def __init__(self, queue: str, data: Path, name: str, port: int | None = None):
        self.port = port or free_port()
        args = ["serve", "--queue", queue, "--no_worker", "--data", str(data), "--port", str(self.port)]
        super().__init__(args, data / f"{name}.log")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def start(self) -> Api:
        super().start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.client.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the API server did not start: {self.log.read_text()[-3000:]}")

    def get(self, path: str) -> httpx.Response:
        """Retries while the server is away (it is being restarted)."""
        for _ in range(300):
            try:
                return self.client.get(path)
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{path}: the server did not come back")


def worker(queue: str, data: Path, name: str, *extra: str) -> Process:
    args = ["worker", "--queue", queue, "--data", str(data), "--name", name, "--tasks", "t2v-A14B"]
    return Process([*args, "--lease_seconds", str(LEASE), "--max_attempts", "3", *extra], data / f"{name}.log")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def live_workers(api: Api) -> int:
    return len(re.findall(r"^wanflow_worker_live\{[^}]*\} 1$", api.get("/metrics").text, re.M))


@pytest.fixture
def cluster(postgres_url, tmp_path):
    """Two API servers and three workers on one queue and one data folder; everything stopped at the end."""
    started: list[Process] = []
    workers = {name: worker(postgres_url, tmp_path, name) for name in ("w1", "w2", "w3")}
    started += [w.start() for w in workers.values()]
    apis = [Api(postgres_url, tmp_path, "api-a"), Api(postgres_url, tmp_path, "api-b")]
    started += [api.start() for api in apis]
    wait_for(lambda: live_workers(apis[0]) == 3, 90, "three live workers")
    yield apis, workers, started
    for process in started:
        process.signal(signal.SIGKILL)


def done_lines(data: Path) -> Counter:
    """How many times each job was reported done, over every worker's log."""
    found = Counter()
    for log in data.glob("w*.log"):
        found.update(re.findall(r"job ([0-9a-f]{32}) done in", log.read_text()))
    return found


def test_sixty_jobs_survive_a_killed_worker_and_a_restarted_server(cluster, postgres_url, tmp_path):
    apis, workers, started = cluster
    bodies = [LONG if i % 30 == 0 else QUICK | {"seed": i} for i in range(60)]  # jobs 0 and 30 run long
    with ThreadPoolExecutor(8) as pool:  # submitted at once, alternately to the two servers
        answers = list(pool.map(lambda i: apis[i % 2].client.post("/api/jobs", json=bodies[i]), range(60)))
    assert [a.status_code for a in answers] == [202] * 60
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 60

    # A long job runs: its worker is killed mid-run (SIGKILL: no shutdown code runs).
    def running_long():
        views = [apis[1].get(f"/api/jobs/{ids[i]}").json() for i in (0, 30)]
        return next((v for v in views if v["status"] == "running" and (v["step"] or 0) >= 1), None)

    killed = wait_for(running_long, 60, "a long job running")["worker"]
    workers[killed].signal(signal.SIGKILL)
    killed_at = time.time()
    store = open_store(postgres_url)
    (victim,) = [job for job in store.list("running") if job["worker"] == killed]  # what it ran when it died
    store.close()

    # Server A is killed and started again on its port while the jobs run; clients retry meanwhile.
    apis[0].signal(signal.SIGKILL)
    apis[0] = Api(postgres_url, tmp_path, "api-a", port=apis[0].port)
    started.append(apis[0].start())

    def finished():
        views = [apis[i % 2].get(f"/api/jobs/{job_id}").json() for i, job_id in enumerate(ids)]
        return views if all(v["status"] in ("done", "failed", "cancelled") for v in views) else None

    views = wait_for(finished, 120, "every job finished")
    by_id = {v["id"]: v for v in views}

    # Every job ended exactly once, done: one row each, one "done" report each, one video each, nothing else.
    assert [v["status"] for v in views] == ["done"] * 60, [(v["status"], v["error"]) for v in views]
    listed = apis[0].get("/api/jobs?limit=1000").json()
    assert sorted(job["id"] for job in listed) == sorted(ids)
    assert done_lines(tmp_path) == Counter(ids)
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == sorted(f"{job_id}.mp4" for job_id in ids)  # no temporaries left, no strays
    assert all((tmp_path / "videos" / name).stat().st_size > 0 for name in videos)

    # The killed worker's job went back to the queue after the lease and finished on another worker.
    again = by_id[victim["id"]]
    assert again["worker"] != killed and again["attempts"] == 2
    assert victim["lease_until"] <= killed_at + LEASE  # the lease it held when it died (renewed up to then)
    assert again["started_at"] >= victim["lease_until"]  # taken again only once that lease had run out
    assert (
        apis[1].get(f"/api/jobs/{victim['id']}/video").content
        == (tmp_path / "videos" / f"{victim['id']}.mp4").read_bytes()
    )
    metrics = apis[1].get("/metrics").text
    assert f'wanflow_lease_expiries_total{{worker="{killed}",model="t2v-A14B"}} 1' in metrics


def test_cancel_progress_and_a_missing_worker_through_any_server(postgres_url, tmp_path):
    """A cancel sent to one server stops the job a worker runs; the event stream of a job submitted elsewhere shows
    its progress; a job whose model no live worker holds waits, saying so, and runs once a worker holding it starts."""
    started = [worker(postgres_url, tmp_path, "w1").start()]
    a, b = Api(postgres_url, tmp_path, "api-a"), Api(postgres_url, tmp_path, "api-b")
    started += [a.start(), b.start()]
    try:
        wait_for(lambda: live_workers(a) == 1, 90, "a live worker")
        long = a.client.post("/api/jobs", json=LONG).json()
        wait_for(lambda: (b.get(f"/api/jobs/{long['id']}").json()["step"] or 0) >= 1, 60, "the long job running")
        asked = time.monotonic()
        assert b.client.post(f"/api/jobs/{long['id']}/cancel").status_code == 200
        cancelled = wait_for(
            lambda: (v := a.get(f"/api/jobs/{long['id']}").json())["status"] != "running" and v, 30, ""
        )
        assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled while running"
        assert time.monotonic() - asked < 5 and cancelled["step"] < LONG["steps"]

        medium = a.client.post("/api/jobs", json=LONG | {"steps": 8}).json()
        seen = events(b.client, medium["id"])  # the stream of a job submitted to the other server
        progress = [body["progress"] for name, body in seen]
        assert progress == sorted(progress) and any(body["status"] == "running" for name, body in seen)
        assert seen[-1][0] == "end" and seen[-1][1]["status"] == "done" and seen[-1][1]["worker"] == "w1"
        assert seen[-1][1]["step"] == 8 and seen[-1][1]["progress"] == 1.0

        started[0].signal(signal.SIGTERM)  # the only worker of t2v-A14B stops
        orphan = b.client.post("/api/jobs", json=QUICK).json()
        view = wait_for(lambda: (v := a.get(f"/api/jobs/{orphan['id']}").json())["waiting"] and v, 10, "waiting")
        assert view["status"] == "queued" and view["waiting"] == "no worker for model t2v-A14B"
        started.append(worker(postgres_url, tmp_path, "w2").start())
        done = wait_for(lambda: (v := b.get(f"/api/jobs/{orphan['id']}").json())["status"] == "done" and v, 90, "")
        assert done["worker"] == "w2" and done["waiting"] is None and done["attempts"] == 1
    finally:
        for process in started:
            process.signal(signal.SIGKILL)
