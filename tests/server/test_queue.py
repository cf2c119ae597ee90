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
        return super().start().ready()

    def ready(self) -> Api:
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
    started += [Process.start(api) for api in apis]  # all five start at once
    for api in apis:
        api.ready()
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


def cancel_and_events_through_the_other_server(a: Api, b: Api) -> str:
    """A cancel sent to ``b`` stops, within a few blocks, the job submitted to ``a`` that a worker runs; the event
    stream from ``b`` of a job submitted to ``a`` shows its progress to the end. The finished job's id."""
    long = a.client.post("/api/jobs", json=LONG).json()
    wait_for(lambda: (b.get(f"/api/jobs/{long['id']}").json()["step"] or 0) >= 1, 60, "the long job running")
    asked = time.monotonic()
    assert b.client.post(f"/api/jobs/{long['id']}/cancel").status_code == 200
    cancelled = wait_for(lambda: (v := a.get(f"/api/jobs/{long['id']}").json())["status"] != "running" and v, 30, "")
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled while running"
    assert time.monotonic() - asked < 5 and cancelled["step"] < LONG["steps"]

    medium = a.client.post("/api/jobs", json=LONG | {"steps": 8}).json()
    seen = events(b.client, medium["id"])
    progress = [body["progress"] for name, body in seen]
    assert progress == sorted(progress) and any(body["status"] == "running" for name, body in seen)
    assert seen[-1][0] == "end" and seen[-1][1]["status"] == "done" and seen[-1][1]["worker"] in ("w1", "w2", "w3")
    assert seen[-1][1]["step"] == 8 and seen[-1][1]["progress"] == 1.0
    return medium["id"]


def sixty_jobs(apis: list[Api]) -> list[str]:
    """Submitted at once, alternately to the two servers; jobs 0 and 30 run long."""
    bodies = [LONG if i % 30 == 0 else QUICK | {"seed": i} for i in range(60)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: apis[i % 2].client.post("/api/jobs", json=bodies[i]), range(60)))
    assert [a.status_code for a in answers] == [202] * 60
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 60
    return ids


def kill_a_worker_mid_job(apis: list[Api], workers: dict, ids: list[str], queue: str) -> tuple[str, dict, float]:
    """SIGKILL (no shutdown code runs) to the worker of a long job that has begun; (its name, the job it ran, when)."""

    def running_long():
        views = [apis[1].get(f"/api/jobs/{ids[i]}").json() for i in (0, 30)]
        return next((v for v in views if v["status"] == "running" and (v["step"] or 0) >= 1), None)

    killed = wait_for(running_long, 60, "a long job running")["worker"]
    workers[killed].signal(signal.SIGKILL)
    killed_at = time.time()
    store = open_store(queue)
    (victim,) = [job for job in store.list("running") if job["worker"] == killed]  # the row as it died
    store.close()
    return killed, victim, killed_at


def a_job_waits_for_a_worker(apis: list[Api], workers: dict, queue: str, data: Path, started: list) -> str:
    """With every worker of its model stopped, a job waits and says why; a new worker runs it. Its id."""
    for process in workers.values():
        process.signal(signal.SIGTERM)
    orphan = apis[1].client.post("/api/jobs", json=QUICK).json()
    view = wait_for(lambda: (v := apis[0].get(f"/api/jobs/{orphan['id']}").json())["waiting"] and v, 10, "waiting")
    assert view["status"] == "queued" and view["waiting"] == "no worker for model t2v-A14B"
    started.append(worker(queue, data, "w4").start())
    done = wait_for(lambda: (v := apis[1].get(f"/api/jobs/{orphan['id']}").json())["status"] == "done" and v, 90, "")
    assert done["worker"] == "w4" and done["waiting"] is None and done["attempts"] == 1
    return orphan["id"]


def test_two_servers_three_workers_a_killed_worker_and_a_restarted_server(cluster, postgres_url, tmp_path):
    apis, workers, started = cluster
    medium = cancel_and_events_through_the_other_server(apis[0], apis[1])
    ids = sixty_jobs(apis)
    killed, victim, killed_at = kill_a_worker_mid_job(apis, workers, ids, postgres_url)

    # Server A is killed and started again on its port while the jobs run; clients retry meanwhile.
    apis[0].signal(signal.SIGKILL)
    apis[0] = Api(postgres_url, tmp_path, "api-a", port=apis[0].port)
    started.append(apis[0].start())

    def finished():
        views = [apis[i % 2].get(f"/api/jobs/{job_id}").json() for i, job_id in enumerate(ids)]
        return views if all(v["status"] in ("done", "failed", "cancelled") for v in views) else None

    views = wait_for(finished, 120, "every job finished")
    by_id = {v["id"]: v for v in views}
    assert [v["status"] for v in views] == ["done"] * 60, [(v["status"], v["error"]) for v in views]

    # The killed worker's job went back to the queue after the lease and finished on another worker.
    again = by_id[victim["id"]]
    assert again["worker"] != killed and again["attempts"] == 2
    assert victim["lease_until"] <= killed_at + LEASE  # the lease it held when it died (renewed up to then)
    assert again["started_at"] >= victim["lease_until"]  # taken again only once that lease had run out
    video = apis[1].get(f"/api/jobs/{victim['id']}/video").content
    assert video == (tmp_path / "videos" / f"{victim['id']}.mp4").read_bytes()
    metrics = apis[1].get("/metrics").text
    assert f'wanflow_lease_expiries_total{{worker="{killed}",model="t2v-A14B"}} 1' in metrics

    orphan = a_job_waits_for_a_worker(
        apis, {k: w for k, w in workers.items() if k != killed}, postgres_url, tmp_path, started
    )

    # Every job ended exactly once: one row each, one "done" report each, one video each, nothing else.
    finished_ids = [*ids, medium, orphan]
    listed = apis[0].get("/api/jobs?limit=1000").json()
    assert sorted(job["id"] for job in listed if job["status"] == "done") == sorted(finished_ids)
    assert len(listed) == len(finished_ids) + 1  # and the cancelled one
    assert done_lines(tmp_path) == Counter(finished_ids)
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == sorted(f"{job_id}.mp4" for job_id in finished_ids)  # no temporaries left, no strays
    assert all((tmp_path / "videos" / name).stat().st_size > 0 for name in videos)


def test_a_torchrun_group_is_one_worker(postgres_url, tmp_path):
    """Two ranks (gloo, Ulysses over 2): one worker in the registry, rank 0 claims and reports, both ranks run each
    job, and a cancel stops both at the same block (else the group would hang in a collective)."""
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "wanflow", "worker", "--queue", postgres_url, "--data"]
    cmd += [str(tmp_path), "--tasks", "t2v-A14B", "--name", "group", "--ulysses_size", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(tmp_path / "group.log", "wb") as log:
        group = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *cmd[1:]], cwd=ROOT, stdout=log, stderr=log, env=env
        )
    store = open_store(postgres_url)
    try:
        wait_for(lambda: any(w["live"] for w in store.workers()), 120, "the group registered")
        body = {"task": "t2v-A14B", "prompt": "a red circle moving right", "steps": 4, "seed": 5}
        quick = store.add("t2v-A14B", body, False, 10)["id"]
        long = store.add("t2v-A14B", body | {"steps": 60, "frames": 9}, False, 10)["id"]
        wait_for(lambda: (store.get(long)["step"] or 0) >= 2, 120, "the long job running")
        assert store.request_cancel(long) == "requested"
        wait_for(lambda: store.get(long)["status"] == "cancelled", 30, "the long job cancelled")
        done = store.get(quick)
        assert done["status"] == "done" and done["worker"] == "group" and done["seed"] == 5
        assert (tmp_path / done["output"]).stat().st_size > 0
        assert store.get(long)["step"] < 60
        assert [w["name"] for w in store.workers()] == ["group"]  # rank 1 never registered nor claimed
        again = store.add("t2v-A14B", body, False, 10)["id"]  # both ranks left the cancelled job together
        wait_for(lambda: store.get(again)["status"] == "done", 60, "a job after the cancel")
    finally:
        store.close()
        group.send_signal(signal.SIGTERM)
        group.wait(30)
