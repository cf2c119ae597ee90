"""A worker: claims the jobs of the models it holds, runs them one at a time, keeps their leases, reports.

The same thread runs inside ``wanflow serve`` (its own worker) and as ``wanflow worker`` on GPU machines. While a job
runs, the ``Heartbeat`` thread renews its lease every third of ``lease_seconds`` (and marks the worker alive), reads
between renewals whether a client asked to cancel it, and on PostgreSQL wakes the worker when a job arrives. A worker
that stops heartbeating (killed, frozen, cut off) loses its job back to the queue once the lease has run out; every
write it would make after that is refused by the store, so a job ends exactly once.

A torchrun group is one worker (``group``): rank 0 claims, heartbeats and reports; every rank runs the job; the
checks before each DiT block are a collective, so that every rank stops at the same block.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from wanflow.pipelines.progress import Progress
from wanflow.server.jobs import (
    LAST_IMAGE,
    VIDEO_INPUT,
    BlockCheck,
    Cancelled,
    Files,
    Interrupted,
    JobProgress,
    Lost,
    Models,
)
from wanflow.server.previews import preview_hooks
from wanflow.server.store import JobStore

log = logging.getLogger(__name__)

STOP, RUN, CANCEL, INTERRUPT, LOSE = "stop", 0, 1, 2, 3  # what rank 0 tells the group at a check
RAISES = {CANCEL: Cancelled, INTERRUPT: Interrupted, LOSE: Lost}


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker(threading.Thread):
    """Runs the jobs of ``models``, oldest first, under the name ``name`` (a restart under the same name takes back
    the jobs it left running at once; another name waits for their leases to run out)."""

    def __init__(
        self,
        store: JobStore,
        models: Models,
        files: Files,
        poll: float = 0.5,
        loras=None,
        name: str = "local",
        lease_seconds: float = 60.0,
        group=None,
        recover_all: bool = False,
    ):
        super().__init__(name="wanflow-worker", daemon=True)
        self.store, self.models, self.files, self.poll = store, models, files, poll
        self.loras = loras  # a ``server.loras.LoraLibrary``: the LoRAs jobs may name
        self.worker_name, self.lease_seconds, self.group = name, lease_seconds, group
        self.recover_all = recover_all  # the store is this worker's alone: whatever ran when it stopped ran here
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.current: str | None = None
        self.flags: dict[str, int] = {}  # the current job's CANCEL or LOSE, set by a client or the heartbeat
        self.lock = threading.Lock()
        self.heartbeat = Heartbeat(self)

    def wake(self) -> None:
        self.wakeup.set()

    def stop(self, timeout: float | None = 30) -> None:
        self.stopping.set()
        self.wakeup.set()
        if self.is_alive():
            self.join(timeout)

    def cancel(self, job_id: str) -> bool:
        """Stops the job at its next check if it runs here (the store holds the request for any other worker)."""
        return self.flag(job_id, CANCEL)

    def flag(self, job_id: str, code: int) -> bool:
        with self.lock:
            if self.current != job_id:
                return False
            self.flags[job_id] = max(self.flags.get(job_id, RUN), code)
            return True

    def run(self) -> None:
        self.store.register(
            self.worker_name, self.models.declarations(), self.lease_seconds, socket.gethostname(), os.getpid()
        )
        requeued = self.store.recover(None if self.recover_all else self.worker_name)
        if requeued:
            log.warning("recovered %d jobs that were running when this worker stopped", len(requeued))
        self.heartbeat.start()
        try:
            while not self.stopping.is_set():
                job = self.next_job()
                if job is None:
                    self.wakeup.wait(self.poll)
                    self.wakeup.clear()
                    continue
                try:
                    self.execute(job)
                except Exception:  # the store failed while reporting: the lease runs out, the job is run again
                    log.exception("job %s: could not report its end; it goes back to the queue", job["id"])
                finally:
                    self.files.preview(job["id"]).unlink(missing_ok=True)
                    with self.lock:
                        self.current = None
                        self.flags.pop(job["id"], None)
        finally:
            self.heartbeat.join(self.poll * 4)
            self.store.unregister(self.worker_name)
            if self.group is not None:
                self.group.share(STOP)

    def next_job(self) -> dict | None:
        """Jobs whose worker died back in the queue, then the oldest job of the models held (told to the group)."""
        try:
            expired = self.store.expire()
            if expired:
                log.warning("%d jobs went back to the queue: their workers stopped renewing their leases", len(expired))
            with self.lock:  # claimed and marked current at once, so a cancel never falls between the two
                extends = self.models.prompt_extender is not None  # jobs asking for an extended prompt need one
                job = self.store.claim(self.worker_name, self.models.names, self.lease_seconds, extends)
                self.current = None if job is None else job["id"]
        except Exception:
            log.exception("the job store failed; trying again")
            job = None
        if self.group is not None:
            job = None if job is None else self.group.seeded(job)
            self.group.share(job)
        return job

    def check(self, job_id: str) -> None:
        """Raises if the job must stop here: the worker stops, a client cancelled it, or its lease was lost."""
        code = self.code(job_id)
        if self.group is not None:
            code = self.group.agree(code)
        if code in RAISES:
            raise RAISES[code]

    def code(self, job_id: str) -> int:
        if self.stopping.is_set():
            return INTERRUPT
        with self.lock:
            return self.flags.get(job_id, RUN)

    def execute(self, job: dict) -> None:
        job_id = job["id"]
        started = time.perf_counter()
        try:
            video = run_job(job, self.models, self.files, self.loras, self.progress(job_id), lambda: self.check(job_id))
            self.save(job_id, video)
        except Cancelled:
            log.info("job %s cancelled", job_id)
            self.store.finish(job_id, "cancelled", owner=self.worker_name, error="cancelled while running")
        except Interrupted:
            log.info("job %s interrupted by shutdown; back in the queue", job_id)
            self.store.finish(
                job_id, "queued", owner=self.worker_name, attempts=max(job["attempts"] - 1, 0), progress=0.0
            )
        except Lost:
            log.warning("job %s: the lease was lost (another worker runs it now); dropped here", job_id)
        except ValueError as e:  # the request itself is wrong (checked by the pipeline's resolve)
            self.store.finish(job_id, "failed", owner=self.worker_name, error=str(e))
        except Exception:
            log.exception("job %s failed", job_id)
            error = "generation failed with an internal error (see the worker's log)"
            self.store.finish(job_id, "failed", owner=self.worker_name, error=error)
        else:
            self.report(job_id, video, time.perf_counter() - started)

    def progress(self, job_id: str) -> Progress:
        """Progress into the job's row; in a group its checks are the block checks' only (collectives on every rank
        at the same places)."""
        check = (lambda: None) if self.group is not None else (lambda: self.check(job_id))
        return JobProgress(self.store, job_id, check, owner=self.worker_name)

    def save(self, job_id: str, video) -> None:
        """The video, written under a temporary name within a renewed lease, and renamed into place only after the
        lease is renewed again: a worker that lost the job while writing (a save slower than the lease) never
        replaces the file of the worker that took it over."""
        self.still_mine(job_id)
        video.save(self.files.video(job_id), before_replace=lambda: self.still_mine(job_id))

    def still_mine(self, job_id: str) -> None:
        """Renews the lease; ``Lost`` or ``Cancelled`` when the job is no longer this worker's to finish."""
        state = self.store.renew(job_id, self.worker_name, self.lease_seconds)
        if state != "run":
            raise Lost if state == "lost" else Cancelled

    def report(self, job_id: str, video, seconds: float) -> None:
        done = self.store.finish(
            job_id,
            "done",
            owner=self.worker_name,
            progress=1.0,
            eta_seconds=0.0,
            seed=video.seed,
            metadata=json.dumps(video.metadata, default=str),
            output=self.files.relative(self.files.video(job_id)),
        )
        if done:
            log.info("job %s done in %.1f s", job_id, seconds)
            self.files.clean_job(job_id)
        else:
            log.warning("job %s: finished after its lease was lost; another worker reports it", job_id)


def run_job(
    job: dict, models: Models, files: Files, loras, progress: Progress, check: Callable[[], None], previews: bool = True
):
    """Runs the job's request on its model; ``check`` raises to stop it, after every step and before every block.
    ``previews``: keep the job's live preview in the shared folder (rank 0 of a group only)."""
    from wanflow.server.loras import loras_applied
    from wanflow.server.schemas import GenerateRequest

    params = dict(job["params"])
    has_last = params.pop(LAST_IMAGE, False)  # set by the server, not a request field
    video = files.input_video(job["id"]) if params.pop(VIDEO_INPUT, False) else None  # (read by the pipeline)
    request = GenerateRequest.model_validate(params)
    pipe = models.get(job.get("model") or job["task"])
    image = _load(files.image(job["id"])) if job["has_image"] else None
    last = _load(files.last_image(job["id"])) if has_last else None
    with loras_applied(loras, request.loras, pipe) as per_call:  # beside the weights for this job only
        options = dataclasses.replace(request.options(image, last, video), call_loras=per_call)
        hooks = [BlockCheck(check), *(preview_hooks(pipe, files.preview(job["id"])) if previews else [])]
        out = pipe(options, progress=progress, callback=lambda step: check(), hooks=hooks)
    return out if request.fps is None else dataclasses.replace(out, fps=request.fps)  # (the same frames, another rate)


def _load(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class Heartbeat(threading.Thread):
    """Keeps the worker's registration and its job's lease alive; brings it cancels and wake-ups between beats."""

    def __init__(self, worker: Worker):
        super().__init__(name="wanflow-heartbeat", daemon=True)
        self.worker = worker
        self.every = worker.lease_seconds / 3

    def run(self) -> None:
        worker, listener = self.worker, self.worker.store.listener()
        due = 0.0
        try:
            while not worker.stopping.is_set():
                try:
                    due = self.beat(due)
                except Exception as e:  # the database is away: the lease may run out; the store then says so
                    log.warning("heartbeat failed (%s); trying again", e)
                for channel, payload in listener.wait(worker.poll) if listener else self.sleep():
                    if channel == "wanflow_jobs":
                        worker.wake()
                    elif channel == "wanflow_cancel":
                        worker.flag(payload, CANCEL)
        finally:
            if listener is not None:
                listener.close()

    def sleep(self) -> list:
        self.worker.stopping.wait(self.worker.poll)
        return []

    def beat(self, due: float) -> float:
        """Renews when due, else reads the current job's state; the next time a renewal is due."""
        worker, job_id = self.worker, self.worker.current
        now = time.monotonic()
        if now >= due:
            worker.store.beat(worker.worker_name)
            if job_id is not None:
                self.mark(job_id, worker.store.renew(job_id, worker.worker_name, worker.lease_seconds))
            return now + self.every
        if job_id is not None:
            self.mark(job_id, worker.store.state(job_id, worker.worker_name))
        return due

    def mark(self, job_id: str, state: str) -> None:
        if state != "run":
            self.worker.flag(job_id, CANCEL if state == "cancel" else LOSE)
