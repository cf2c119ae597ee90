"""The job queue: jobs persisted in SQLite, run one at a time by a single worker thread on warm pipelines.

A job's life: queued -> running -> done | failed | cancelled. Every change is written to the database before it
is reported, so a server killed at any moment loses nothing: on start, queued jobs simply run, and a job that was
running goes back to the queue, or fails with a reason once it has been tried ``max_attempts`` times.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from wanflow.pipelines.progress import Progress
from wanflow.sampling.hooks import Step, StepHook
from wanflow.tasks import TASKS, Task

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
PREVIEW_SIDE = 256  # pixels: live previews (blurry anyway) are scaled down to this for the event stream
STAGE_WEIGHTS = {"text": (0.0, 0.05), "denoise": (0.05, 0.85), "decode": (0.90, 0.10)}  # (start, share) of 0-1

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id TEXT UNIQUE NOT NULL,
    task TEXT NOT NULL,
    params TEXT NOT NULL,                   -- JSON of the GenerateRequest
    has_image INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT, step INTEGER, steps INTEGER, expert TEXT, eta_seconds REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    seed INTEGER,
    metadata TEXT                           -- JSON of Video.metadata once done
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


def new_id() -> str:
    return uuid.uuid4().hex


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already."""


class Cancelled(Exception):
    """Raised from the step callback when a client cancels the running job."""


class Interrupted(Exception):
    """Raised from the step callback when the server stops; the job goes back to the queue."""


class JobStore:
    """All job state, in one SQLite file; every method is one short transaction, safe from any thread."""

    def __init__(self, path: str | Path, max_attempts: int = 2):
        self.max_attempts = max_attempts
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return result

    def add(
        self, task: str, params: Mapping[str, object], has_image: bool, max_queue: int, job_id: str | None = None
    ) -> dict:
        """A new queued job; ``QueueFull`` when ``max_queue`` jobs are waiting already."""
        job_id = job_id or new_id()

        def insert(db: sqlite3.Connection) -> None:
            (waiting,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
            if waiting >= max_queue:
                raise QueueFull(f"the queue is full ({max_queue} jobs waiting); try again later")
            db.execute(
                "INSERT INTO jobs (id, task, params, has_image, status, created_at) VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, task, json.dumps(dict(params)), int(has_image), time.time()),
            )

        self._tx(insert)
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, status: str | None = None, limit: int = 500) -> list[dict]:
        """Newest first."""
        query, args = "SELECT * FROM jobs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        with self.lock:
            rows = self.db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def claim(self) -> dict | None:
        """The oldest queued job, now running (one more attempt), or None."""

        def take(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, progress = 0, "
                "stage = NULL, step = NULL, steps = NULL, expert = NULL, eta_seconds = NULL WHERE id = ?",
                (time.time(), row["id"]),
            )
            return row["id"]

        job_id = self._tx(take)
        return None if job_id is None else self.get(job_id)

    def update(self, job_id: str, **fields: object) -> None:
        if not fields:
            return
        names = ", ".join(f"{name} = ?" for name in fields)
        with self.lock:
            self.db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def finish(self, job_id: str, status: str, **fields: object) -> None:
        assert status in TERMINAL or status == "queued", status
        self.update(job_id, status=status, finished_at=None if status == "queued" else time.time(), **fields)

    def cancel_queued(self, job_id: str) -> bool:
        with self.lock:
            cur = self.db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = 'cancelled before it started' "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
        return cur.rowcount == 1

    def delete(self, job_id: str) -> bool:
        """Removes a job that is not running."""
        with self.lock:
            cur = self.db.execute("DELETE FROM jobs WHERE id = ? AND status != 'running'", (job_id,))
        return cur.rowcount == 1

    def recover(self) -> list[str]:
        """After a crash: running jobs go back to the queue, or fail once they have used up their attempts."""

        def fix(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE status = 'running'").fetchall()
            for row in rows:
                if row["attempts"] >= self.max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                        (time.time(), f"the server stopped during this job {row['attempts']} times", row["id"]),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', progress = 0, stage = NULL, step = NULL, "
                        "expert = NULL, eta_seconds = NULL WHERE id = ?",
                        (row["id"],),
                    )
            return [row["id"] for row in rows]

        return self._tx(fix)

    def counts(self) -> dict[str, int]:
        with self.lock:
            rows = self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {row[0]: row[1] for row in rows}

    def generation_seconds(self) -> tuple[float, int]:
        """Sum and count of the run times of finished jobs."""
        with self.lock:
            total, count = self.db.execute(
                "SELECT COALESCE(SUM(finished_at - started_at), 0), COUNT(*) FROM jobs WHERE status = 'done'"
            ).fetchone()
        return float(total), int(count)


def _job(row: sqlite3.Row) -> dict:
    job = dict(row)
    job.pop("seq")
    job["params"] = json.loads(job["params"])
    job["metadata"] = json.loads(job["metadata"]) if job["metadata"] else None
    job["has_image"] = bool(job["has_image"])
    return job


class Files:
    """Where a job's files live: named by job id only, never by anything a client sent."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prepare(self) -> None:
        """The folders, without the temporaries of videos whose writing a killed server left unfinished."""
        from wanflow.io.video import remove_all_stale_temps

        for sub in ("videos", "inputs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        removed = remove_all_stale_temps(self.root / "videos")
        if removed:
            log.info("removed %d unfinished video files of an earlier run", len(removed))

    def video(self, job_id: str) -> Path:
        return self.root / "videos" / f"{job_id}.mp4"

    def image(self, job_id: str) -> Path:
        return self.root / "inputs" / f"{job_id}.png"

    def remove(self, job_id: str) -> None:
        """The job's files, and the temporaries an interrupted write of its video left."""
        from wanflow.io.video import remove_stale_temps

        for path in (self.video(job_id), self.image(job_id)):
            path.unlink(missing_ok=True)
        remove_stale_temps(self.video(job_id))


class Models:
    """One pipeline per task, loaded once (lazily, from a loader) and kept warm. ``tasks``: the task (with its
    checkpoint's defaults) of a pipeline not loaded yet, so that requests are checked against it before it loads."""

    def __init__(self, pipelines: Mapping[str, object], tasks: Mapping[str, Task] | None = None):
        if not pipelines:
            raise ValueError("the server needs at least one pipeline")
        self.sources = dict(pipelines)
        self.loaded: dict[str, object] = {k: v for k, v in pipelines.items() if hasattr(v, "task")}
        self.declared = dict(tasks or {})
        self.lock = threading.Lock()

    @property
    def tasks(self) -> list[str]:
        return list(self.sources)

    def peek(self, task: str) -> object | None:
        return self.loaded.get(task)

    def task(self, name: str) -> Task | None:
        """The task of the loaded pipeline, else the one declared for it, else the registry's entry."""
        return getattr(self.peek(name), "task", None) or self.declared.get(name) or TASKS.get(name)

    def get(self, task: str) -> object:
        with self.lock:
            if task not in self.loaded:
                log.info("loading the %s pipeline", task)
                self.loaded[task] = self.sources[task]()
            return self.loaded[task]


class JobProgress(Progress):
    """Writes the pipeline's progress into the job's row; stops the job when asked to."""

    def __init__(self, store: JobStore, job_id: str, check: Callable[[], None]):
        self.store, self.job_id, self.check = store, job_id, check
        self.started = time.time()
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        self.check()
        self.totals[stage], self.done[stage] = max(total, 1), 0
        fields = {"stage": stage}
        if stage == "denoise":
            fields |= {"step": 0, "steps": total}
        self.store.update(self.job_id, **fields)

    def advance(self, stage: str, **info: object) -> None:
        self.done[stage] = self.done.get(stage, 0) + 1
        begin, share = STAGE_WEIGHTS.get(stage, (0.0, 0.0))
        progress = min(1.0, begin + share * self.done[stage] / self.totals.get(stage, 1))
        elapsed = time.time() - self.started
        eta = elapsed / progress * (1 - progress) if progress > 0.05 else None
        fields = {"progress": progress, "stage": stage, "eta_seconds": eta}
        if stage == "denoise":
            fields |= {"step": self.done[stage], "expert": info.get("expert")}
        self.store.update(self.job_id, **fields)
        self.check()


class BlockCheck(StepHook):
    """Runs ``check`` before every DiT block, so that a cancel (or a shutdown) stops a run within one block: a step of
    a big request takes over a minute, and the progress callback only runs between steps."""

    def __init__(self, check: Callable[[], None]):
        self.check = check
        self.model = None
        self.handles: list = []

    def before(self, step: Step, model) -> None:
        if model is self.model:
            return
        self.end()  # the expert changed: move the checks to the new one
        self.model = model
        self.handles = [block.register_forward_pre_hook(self._check) for block in getattr(model, "blocks", ())]

    def _check(self, block, args) -> None:
        self.check()

    def end(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.model, self.handles = None, []


class Worker(threading.Thread):
    """The one thread that runs jobs, oldest first."""

    def __init__(self, store: JobStore, models: Models, files: Files, poll: float = 1.0, loras=None):
        super().__init__(name="wanflow-worker", daemon=True)
        self.store, self.models, self.files, self.poll = store, models, files, poll
        self.loras = loras  # a ``server.loras.LoraLibrary``: the LoRAs jobs may name
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.current: str | None = None
        self.cancel_requested: set[str] = set()
        self.previews: dict[str, tuple[int, bytes]] = {}  # running job id -> (steps done, PNG) of its live preview
        self.lock = threading.Lock()

    def wake(self) -> None:
        self.wakeup.set()

    def stop(self, timeout: float | None = 30) -> None:
        self.stopping.set()
        self.wakeup.set()
        if self.is_alive():
            self.join(timeout)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job now, or a running one at its next check (``BlockCheck``); False if it has finished."""
        with self.lock:
            if self.store.cancel_queued(job_id):
                return True
            if self.current == job_id:
                self.cancel_requested.add(job_id)
                return True
        return False

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:  # claimed and marked current at once, so a cancel never falls between the two
                job = self.store.claim()
                self.current = None if job is None else job["id"]
            if job is None:
                self.wakeup.wait(self.poll)
                self.wakeup.clear()
                continue
            try:
                self.execute(job)
            finally:
                with self.lock:
                    self.current = None
                    self.cancel_requested.discard(job["id"])
                    self.previews.pop(job["id"], None)

    def check(self, job_id: str) -> None:
        if self.stopping.is_set():
            raise Interrupted
        if job_id in self.cancel_requested:
            raise Cancelled

    def execute(self, job: dict) -> None:
        job_id = job["id"]
        check = lambda: self.check(job_id)  # noqa: E731
        started = time.perf_counter()
        try:
            video = self.generate(job, JobProgress(self.store, job_id, check), check)
            video.save(self.files.video(job_id))  # written under a temporary name, then renamed
        except Cancelled:
            log.info("job %s cancelled", job_id)
            self.store.finish(job_id, "cancelled", error="cancelled while running")
        except Interrupted:
            log.info("job %s interrupted by shutdown; back in the queue", job_id)
            self.store.finish(job_id, "queued", progress=0.0, attempts=max(job["attempts"] - 1, 0))
        except ValueError as e:  # the request itself is wrong (checked by the pipeline's resolve)
            self.store.finish(job_id, "failed", error=str(e))
        except Exception:
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, "failed", error="generation failed with an internal error (see the server log)")
        else:
            seconds = time.perf_counter() - started
            log.info("job %s done in %.1f s", job_id, seconds)
            self.store.finish(
                job_id,
                "done",
                progress=1.0,
                eta_seconds=0.0,
                seed=video.seed,
                metadata=json.dumps(video.metadata, default=str),
            )

    def generate(self, job: dict, progress: Progress, check: Callable[[], None]):
        """Runs the job's request; ``check`` raises to stop it, and runs after every step and before every block."""
        from PIL import Image

        from wanflow.server.loras import loras_applied
        from wanflow.server.schemas import GenerateRequest

        request = GenerateRequest.model_validate(job["params"])
        pipe = self.models.get(job["task"])
        image = None
        if job["has_image"]:
            with Image.open(self.files.image(job["id"])) as im:
                image = im.convert("RGB")
        with loras_applied(self.loras, request.loras, pipe):  # beside the weights for this job only
            options = request.options(image)
            hooks = [BlockCheck(check), *self.preview_hooks(pipe, job["id"])]
            return pipe(options, progress=progress, callback=lambda step: check(), hooks=hooks)

    def preview_hooks(self, pipe, job_id: str) -> list[StepHook]:
        """The job's live preview into ``previews`` (``runtime.preview``; none for a pipeline without one)."""
        make = getattr(pipe, "preview", None)
        if make is None:
            return []

        def keep(image, step: Step) -> None:
            image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            png = io.BytesIO()
            image.save(png, format="PNG")
            self.previews[job_id] = (step.index + 1, png.getvalue())

        try:
            return [make(keep)]
        except ValueError as e:  # no preview map for this model's VAE: the job runs without one
            log.warning("no live preview for job %s: %s", job_id, e)
            return []
