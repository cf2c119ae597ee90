"""Jobs per minute of a PostgreSQL queue with 1, 2 and 3 ``wanflow worker`` processes on the built-in models (CPU).

    python benchmarks/queue_throughput.py                        # a throwaway PostgreSQL; 1, 2, 3 workers; 30 jobs
    python benchmarks/queue_throughput.py --queue postgresql://... --workers 1 2 4 --jobs 60 --json out/queue.json

For each worker count: a new database, N worker processes (``python -m wanflow worker --tasks t2v-A14B``, one torch
thread each), one warm-up job per worker (the model loads on its first job), then ``--jobs`` jobs queued at once
through the store (what an API server does on ``POST /api/jobs``). The figure is jobs / (last finish - first start)
of the measured jobs, from the database's own timestamps; each job is the built-in t2v model's default request
(64x64, 9 frames, 20 UniPC steps with CFG) with its own seed, and every one must end done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.server import postgres  # noqa: E402
from wanflow.server.engines import open_store  # noqa: E402

MODEL = "t2v-A14B"


def start_workers(url: str, data: Path, count: int) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "wanflow", "worker", "--queue", url, "--data", str(data), "--tasks", MODEL]
        log = open(data / f"worker{i}.log", "wb")
        procs.append(
            subprocess.Popen([*cmd, "--name", f"bench{i}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        )
    return procs


def run_all(store, count: int, first_seed: int, timeout: float = 1800) -> list[dict]:
    """Queues ``count`` jobs at once and waits until every one has ended; their rows."""
    ids = [
        store.add(MODEL, {"task": MODEL, "prompt": "a red circle moving right", "seed": first_seed + i}, False, 10**6)[
            "id"
        ]
        for i in range(count)
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(job_id) for job_id in ids]
        if all(job["status"] in ("done", "failed", "cancelled") for job in jobs):
            bad = [(job["status"], job["error"]) for job in jobs if job["status"] != "done"]
            assert not bad, bad
            return jobs
        time.sleep(0.2)
    raise TimeoutError(f"{count} jobs not finished within {timeout} s")


def measure(server_url: str, workers: int, jobs: int) -> dict:
    url = postgres.new_database(server_url, f"bench_{uuid.uuid4().hex[:8]}")
    store = open_store(url)
    with tempfile.TemporaryDirectory() as folder:
        procs = start_workers(url, Path(folder), workers)
        try:
            while sum(w["live"] for w in store.workers()) < workers:
                time.sleep(0.2)
            run_all(store, workers, 0)  # warm-up: one per worker, each loads its model
            rows = run_all(store, jobs, 1000)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    store.close()
    span = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    ran_on = sorted({r["worker"] for r in rows})
    mean_job = sum(r["finished_at"] - r["started_at"] for r in rows) / len(rows)
    return {
        "workers": workers,
        "jobs": jobs,
        "seconds": span,
        "jobs_per_minute": 60 * jobs / span,
        "mean_job_seconds": mean_job,
        "ran_on": ran_on,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", help="a PostgreSQL server's URL (default: a throwaway one started here)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=30, help="measured jobs per worker count")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    folder = None
    if args.queue is None:
        folder = Path(tempfile.mkdtemp(prefix="wanflow-bench-pg-"))
        args.queue = postgres.start(folder)
    try:
        results = []
        for count in args.workers:
            result = measure(args.queue, count, args.jobs)
            results.append(result)
            print(
                f"{count} worker(s): {args.jobs} jobs in {result['seconds']:.1f} s = "
                f"{result['jobs_per_minute']:.1f} jobs/min (mean job {result['mean_job_seconds']:.2f} s; "
                f"ran on {', '.join(result['ran_on'])})",
                flush=True,
            )
    finally:
        if folder is not None:
            postgres.stop(folder)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
