"""The job store: every job, every worker and its lease, in one database that all API servers and workers share.

Two engines behind one class: SQLite (``sqlite_store``, the default: one file, nothing to install, one machine) and
PostgreSQL (``postgres_store``, ``--queue postgresql://...``: several machines). The SQL is written once, here; an
engine only says how it opens a transaction, what "now" is, how a claim skips the rows another one holds, and how it
wakes a sleeping worker.

A job's life: queued -> running -> done | failed | cancelled. A worker claims the oldest queued job of the models it
holds, with a lease (``lease_until``) that it renews while it runs; every write of a worker is conditional on its
still owning the job, so a worker that lost its lease can no longer change it. ``expire`` puts the jobs whose lease
ran out back in the queue (or fails them with a reason after ``max_attempts``). Times are seconds since the epoch,
taken from the database's clock (``NOW`` in the SQL), so that machines with skewed clocks agree on leases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping

from wanflow.sampling.noise import as_int64, from_int64

STATUSES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
STALE_WORKER_SECONDS = 7 * 86400  # a worker not seen for this long leaves the registry (and its models with it)

# The tables, for both engines: {id} is the auto-increment key, {real} a double. NOW: the database's clock.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq {id},                               -- queue order
    id TEXT UNIQUE NOT NULL,
    task TEXT NOT NULL,
    model TEXT,                             -- the model the job wants (a worker holds it under this name)
    params TEXT NOT NULL,                   -- JSON of the GenerateRequest
    has_image INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    progress {real} NOT NULL DEFAULT 0,
    stage TEXT, step INTEGER, steps INTEGER, expert TEXT, eta_seconds {real},
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL, started_at {real}, finished_at {real},
    seed BIGINT,
    metadata TEXT,                          -- JSON of Video.metadata once done
    worker TEXT,                            -- the worker running it (or that ran it)
    lease_until {real},                     -- while running: back to the queue after this
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    extend_prompt INTEGER NOT NULL DEFAULT 0, -- asks for its prompt extended: only workers with an extender claim it
    output TEXT                             -- the video, relative to the shared data folder, once done
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    host TEXT, pid INTEGER,
    models TEXT NOT NULL,                   -- JSON: model name -> its task and the task defaults it overrides
    lease_seconds {real} NOT NULL,
    started_at {real} NOT NULL, seen_at {real} NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS lease_expiries (
    worker TEXT NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (worker, model)
);
"""
# Columns added to the jobs table since its first release: a store opened on an older database adds them.
ADDED_COLUMNS = {
    "model": "TEXT",
    "worker": "TEXT",
    "lease_until": "{real}",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "output": "TEXT",
    "extend_prompt": "INTEGER NOT NULL DEFAULT 0",
}
CLEARED = "progress = 0, stage = NULL, step = NULL, steps = NULL, expert = NULL, eta_seconds = NULL"
LIVE = "stopped = 0 AND seen_at + lease_seconds > NOW"  # a worker that beat within its lease


def new_id() -> str:
    return uuid.uuid4().hex


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Tx:
    """One transaction's statements: ``?`` placeholders, ``NOW`` for the database's clock; rows come back as dicts."""

    def __init__(self, execute: Callable[[str, tuple], object], now: str):
        self._execute, self.now = execute, now

    def run(self, sql: str, args: Iterable = ()) -> int:
        return self._execute(sql.replace("NOW", self.now), tuple(args)).rowcount

    def rows(self, sql: str, args: Iterable = ()) -> list[dict]:
        return [dict(row) for row in self._execute(sql.replace("NOW", self.now), tuple(args)).fetchall()]

    def one(self, sql: str, args: Iterable = ()) -> dict | None:
        rows = self.rows(sql, args)
        return rows[0] if rows else None


def marks(values: list) -> str:
    """``?, ?, ?`` for ``IN (...)``."""
    return ", ".join("?" * len(values))


class JobStore:
    """The jobs and the workers, each method one short transaction, safe from any thread. An engine subclass
    provides ``_tx``, ``NOW``, ``SKIP_LOCKED`` and the wake-ups (``notify``, ``listener``)."""

    NOW = ""  # SQL for the current time in seconds since the epoch
    SKIP_LOCKED = ""  # appended to a SELECT that claims rows: skip those another transaction holds
    ENGINE = ""
    max_attempts = 2

    def _tx(self, fn: Callable[[Tx], object], write: bool = True) -> object:
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], object]) -> object:
        return self._tx(fn, write=False)

    def notify(self, tx: Tx, channel: str, payload: str = "") -> None:
        """Wakes the listeners of ``channel`` when the transaction commits (an engine without it: nothing)."""

    def admit(self, tx: Tx) -> None:
        """Makes the transactions that add jobs run one at a time, so that counting the queue and adding to it are one
        step for every API server (an engine whose write transactions are serial already: nothing)."""

    def listener(self):
        """A ``Listener`` of this store's wake-ups, or None when the engine has none (then workers poll)."""
        return None

    def close(self) -> None:
        raise NotImplementedError

    # --- jobs ---

    def add(
        self,
        task: str,
        params: Mapping[str, object],
        has_image: bool,
        max_queue: int,
        job_id: str | None = None,
        model: str | None = None,
    ) -> dict:
        """A new queued job for ``model`` (default: the model named as the task); ``QueueFull`` when ``max_queue``
        jobs are waiting already."""
        job_id = job_id or new_id()

        def insert(tx: Tx) -> None:
            self.admit(tx)
            waiting = tx.one("SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'")["n"]
            if waiting >= max_queue:
                raise QueueFull(f"the queue is full ({max_queue} jobs waiting); try again later")
            tx.run(
                "INSERT INTO jobs (id, task, model, params, has_image, extend_prompt, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', NOW)",
                (job_id, task, model or task, json.dumps(dict(params)), int(has_image), extends(params)),
            )
            self.notify(tx, "wanflow_jobs", model or task)

        self._tx(insert)
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        row = self._read(lambda tx: tx.one("SELECT * FROM jobs WHERE id = ?", (job_id,)))
        return None if row is None else job_record(row)

    def list(self, status: str | None = None, limit: int = 500) -> list[dict]:
        """Newest first."""
        where, args = ("", ()) if status is None else (" WHERE status = ?", (status,))
        rows = self._read(lambda tx: tx.rows(f"SELECT * FROM jobs{where} ORDER BY seq DESC LIMIT ?", (*args, limit)))
        return [job_record(r) for r in rows]

    def claim(
        self,
        worker: str = "local",
        models: list[str] | None = None,
        lease_seconds: float = 60.0,
        extends_prompts: bool = False,
    ) -> dict | None:
        """The oldest queued job of ``models`` (None: of any), now running on ``worker`` with a lease of
        ``lease_seconds`` and one more attempt; None when there is none. Two workers never get the same job. A job
        that asks for its prompt to be extended goes only to a worker that ``extends_prompts``."""
        if models is not None and not models:
            return None
        which = "" if models is None else f" AND model IN ({marks(models)})"
        which += "" if extends_prompts else " AND extend_prompt = 0"
        pick = f"SELECT id FROM jobs WHERE status = 'queued'{which} ORDER BY seq LIMIT 1{self.SKIP_LOCKED}"

        def take(tx: Tx) -> dict | None:
            return tx.one(
                f"UPDATE jobs SET status = 'running', worker = ?, attempts = attempts + 1, started_at = NOW, "
                f"finished_at = NULL, lease_until = NOW + ?, cancel_requested = 0, {CLEARED} "
                f"WHERE id = ({pick}) AND status = 'queued' RETURNING *",
                (worker, float(lease_seconds), *(models or ())),
            )

        row = self._tx(take)
        return None if row is None else job_record(row)

    def renew(self, job_id: str, worker: str, lease_seconds: float) -> str:
        """Extends ``worker``'s lease on the job: "run" (go on), "cancel" (a client asked to stop it), or "lost" (it
        is no longer this worker's: its lease ran out and it went back to the queue)."""

        def extend(tx: Tx) -> str:
            row = tx.one(
                "UPDATE jobs SET lease_until = NOW + ? WHERE id = ? AND worker = ? AND status = 'running' "
                "RETURNING cancel_requested",
                (float(lease_seconds), job_id, worker),
            )
            return "lost" if row is None else ("cancel" if row["cancel_requested"] else "run")

        return self._tx(extend)

    def state(self, job_id: str, worker: str) -> str:
        """As ``renew`` ("run", "cancel", "lost"), without extending the lease: a cheap read to poll."""
        row = self._read(lambda tx: tx.one("SELECT status, worker, cancel_requested FROM jobs WHERE id = ?", (job_id,)))
        if row is None or row["status"] != "running" or row["worker"] != worker:
            return "lost"
        return "cancel" if row["cancel_requested"] else "run"

    def update(self, job_id: str, owner: str | None = None, **fields: object) -> bool:
        """Sets ``fields`` (progress, stage, ...); with ``owner``, only while that worker runs the job."""
        if not fields:
            return True
        fields = columns(fields)
        names = ", ".join(f"{name} = ?" for name in fields)
        where, args = ("", ()) if owner is None else (" AND worker = ? AND status = 'running'", (owner,))
        return (
            self._tx(
                lambda tx: tx.run(f"UPDATE jobs SET {names} WHERE id = ?{where}", (*fields.values(), job_id, *args))
            )
            == 1
        )

    def finish(self, job_id: str, status: str, owner: str | None = None, **fields: object) -> bool:
        """The job ends (``status`` in TERMINAL) or goes back to the queue ("queued"); with ``owner``, only if that
        worker still runs it. False when it did not (its lease was lost)."""
        assert status in TERMINAL or status == "queued", status
        fields = columns(fields)
        if status == "queued":
            fields = {"worker": None, "started_at": None} | fields
        names = ", ".join(f"{name} = ?" for name in fields)
        finished = "NULL" if status == "queued" else "NOW"
        where, args = ("", ()) if owner is None else (" AND worker = ? AND status = 'running'", (owner,))

        def end(tx: Tx) -> int:
            count = tx.run(
                f"UPDATE jobs SET status = ?, finished_at = {finished}, lease_until = NULL"
                f"{', ' if names else ''}{names} WHERE id = ?{where}",
                (status, *fields.values(), job_id, *args),
            )
            if status == "queued" and count:
                self.notify(tx, "wanflow_jobs", "")
            return count

        return self._tx(end) == 1

    def cancel_queued(self, job_id: str) -> bool:
        return (
            self._tx(
                lambda tx: tx.run(
                    "UPDATE jobs SET status = 'cancelled', finished_at = NOW, error = 'cancelled before it started' "
                    "WHERE id = ? AND status = 'queued'",
                    (job_id,),
                )
            )
            == 1
        )

    def request_cancel(self, job_id: str) -> str | None:
        """ "cancelled" (it was queued: now cancelled), "requested" (it runs: its worker stops it at its next check),
        or None (it has finished, or there is no such job)."""

        def cancel(tx: Tx) -> str | None:
            if tx.run(
                "UPDATE jobs SET status = 'cancelled', finished_at = NOW, error = 'cancelled before it started' "
                "WHERE id = ? AND status = 'queued'",
                (job_id,),
            ):
                return "cancelled"
            if tx.run("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)):
                self.notify(tx, "wanflow_cancel", job_id)
                return "requested"
            return None

        return self._tx(cancel)

    def delete(self, job_id: str) -> bool:
        """Removes a job that is not running."""
        return self._tx(lambda tx: tx.run("DELETE FROM jobs WHERE id = ? AND status != 'running'", (job_id,))) == 1

    def recover(self, worker: str | None = None) -> list[str]:
        """Jobs left running by ``worker`` (None: by anyone) when it stopped, known to run no more (the same worker
        starting again; a server that is the only worker of its file): back to the queue, or failed once they have
        used up their attempts."""
        where, args = ("", ()) if worker is None else (" AND worker = ?", (worker,))

        def fix(tx: Tx) -> list[str]:
            rows = tx.rows(f"SELECT id, attempts, cancel_requested FROM jobs WHERE status = 'running'{where}", args)
            for row in rows:
                self._requeue(tx, row, f"the server stopped during this job {row['attempts']} times")
            return [row["id"] for row in rows]

        return self._tx(fix)

    def expire(self) -> list[str]:
        """Jobs whose worker stopped renewing its lease: back to the queue (counted as a lease expiry of that worker
        and model), or failed with the reason once they have used up their attempts."""

        def fix(tx: Tx) -> list[str]:
            rows = tx.rows(
                "SELECT id, attempts, cancel_requested, worker, model FROM jobs "
                f"WHERE status = 'running' AND lease_until < NOW ORDER BY seq{self.SKIP_LOCKED}"
            )
            for row in rows:
                why = f"the worker running this job stopped (its lease expired) {row['attempts']} times"
                self._requeue(tx, row, why)
                tx.run(
                    "INSERT INTO lease_expiries (worker, model, count) VALUES (?, ?, 1) "
                    "ON CONFLICT (worker, model) DO UPDATE SET count = lease_expiries.count + 1",
                    (row["worker"] or "", row["model"] or ""),
                )
            return [row["id"] for row in rows]

        return self._tx(fix)

    def _requeue(self, tx: Tx, row: dict, why: str) -> None:
        if row["cancel_requested"]:
            status, error = "cancelled", "cancelled while running (its worker stopped before it saw the cancel)"
        elif row["attempts"] >= self.max_attempts:
            status, error = "failed", why
        else:
            tx.run(
                f"UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, started_at = NULL, {CLEARED} "
                "WHERE id = ?",
                (row["id"],),
            )
            self.notify(tx, "wanflow_jobs", "")
            return
        tx.run(
            "UPDATE jobs SET status = ?, error = ?, finished_at = NOW, lease_until = NULL WHERE id = ?",
            (status, error, row["id"]),
        )

    def counts(self) -> dict[str, int]:
        rows = self._read(lambda tx: tx.rows("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"))
        return {status: 0 for status in STATUSES} | {row["status"]: int(row["n"]) for row in rows}

    def generation_seconds(self) -> tuple[float, int]:
        """Sum and count of the run times of finished jobs."""
        row = self._read(
            lambda tx: tx.one(
                "SELECT COALESCE(SUM(finished_at - started_at), 0) AS total, COUNT(*) AS n FROM jobs "
                "WHERE status = 'done'"
            )
        )
        return float(row["total"]), int(row["n"])

    # --- workers ---

    def register(self, worker: str, models: Mapping[str, dict], lease_seconds: float, host: str = "", pid: int = 0):
        """``worker`` holds ``models`` ({name: {"task": ..., "overrides": {...}}}) from now on; a restart under the
        same name replaces its row. Workers not seen for a week leave the registry."""

        def upsert(tx: Tx) -> None:
            tx.run("DELETE FROM workers WHERE seen_at < NOW - ?", (float(STALE_WORKER_SECONDS),))
            tx.run(
                "INSERT INTO workers (name, host, pid, models, lease_seconds, started_at, seen_at, stopped) "
                "VALUES (?, ?, ?, ?, ?, NOW, NOW, 0) ON CONFLICT (name) DO UPDATE SET host = excluded.host, "
                "pid = excluded.pid, models = excluded.models, lease_seconds = excluded.lease_seconds, "
                "started_at = excluded.started_at, seen_at = excluded.seen_at, stopped = 0",
                (worker, host, pid, json.dumps(dict(models)), float(lease_seconds)),
            )

        self._tx(upsert)

    def beat(self, worker: str) -> None:
        """The worker is alive (a worker is live while it beats within its lease)."""
        self._tx(lambda tx: tx.run("UPDATE workers SET seen_at = NOW, stopped = 0 WHERE name = ?", (worker,)))

    def unregister(self, worker: str) -> None:
        """The worker stopped (it stays in the registry, so its models stay known: their jobs wait for it)."""
        self._tx(lambda tx: tx.run("UPDATE workers SET stopped = 1 WHERE name = ?", (worker,)))

    def workers(self) -> list[dict]:
        """Every registered worker, with ``live`` and its ``models`` parsed."""
        rows = self._read(lambda tx: tx.rows(f"SELECT *, CASE WHEN {LIVE} THEN 1 ELSE 0 END AS live FROM workers"))
        for row in rows:
            row["models"], row["live"] = json.loads(row["models"]), bool(row["live"])
        return sorted(rows, key=lambda row: row["name"])

    def models(self) -> dict[str, dict]:
        """The models of the registry: {name: {"task", "overrides", "workers": how many live workers hold it,
        "extends_prompts": whether any registered worker of it extends prompts, "extenders": how many live ones}}."""
        out: dict[str, dict] = {}
        for worker in self.workers():
            for name, declared in worker["models"].items():
                entry = out.setdefault(name, dict(declared, workers=0, extenders=0))
                entry["workers"] += int(worker["live"])
                entry["extenders"] += int(worker["live"] and bool(declared.get("extends_prompts")))
                entry["extends_prompts"] = bool(entry.get("extends_prompts") or declared.get("extends_prompts"))
        return out

    def metrics(self) -> dict[str, list[dict]]:
        """The rows of ``/metrics``: queued per model, running and finished per worker and model, lease expiries."""
        queries = {
            "queued": "SELECT model, COUNT(*) AS n FROM jobs WHERE status = 'queued' GROUP BY model",
            "running": "SELECT worker, model, COUNT(*) AS n FROM jobs WHERE status = 'running' GROUP BY worker, model",
            "durations": "SELECT worker, model, SUM(finished_at - started_at) AS total, COUNT(*) AS n FROM jobs "
            "WHERE status = 'done' GROUP BY worker, model",
            "expiries": "SELECT worker, model, count AS n FROM lease_expiries",
        }
        return self._read(lambda tx: {name: tx.rows(sql) for name, sql in queries.items()})


def extends(params: Mapping[str, object]) -> int:
    """1 when the job asks for its prompt to be extended."""
    return int(bool(params.get("extend_prompt")))


def job_record(row: Mapping) -> dict:
    job = dict(row)
    job.pop("seq", None)
    job["params"] = json.loads(job["params"])
    job["metadata"] = json.loads(job["metadata"]) if job["metadata"] else None
    job["has_image"] = bool(job["has_image"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    job["extend_prompt"] = bool(job.get("extend_prompt"))
    job["seed"] = None if job.get("seed") is None else from_int64(job["seed"])
    return job


def columns(fields: Mapping[str, object]) -> dict[str, object]:
    """A job's fields as its columns hold them: the seed (up to 2**64 - 1) as the BIGINT of its bits."""
    seed = fields.get("seed")
    return dict(fields) if seed is None else {**fields, "seed": as_int64(int(seed))}
