"""What a worker needs besides the store: the models it holds (``Models``), where a job's files live (``Files``), the
progress it writes into the job's row (``JobProgress``) and the check that stops a run within one DiT block
(``BlockCheck``). The job store is ``store`` (``JobStore`` here is its SQLite engine, the default); the thread that
claims and runs jobs is ``worker``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from wanflow.pipelines.progress import Progress
from wanflow.sampling.hooks import Step, StepHook
from wanflow.server.sqlite_store import SqliteStore
from wanflow.server.store import STATUSES, TERMINAL, QueueFull, new_id
from wanflow.server.store import JobStore as AnyStore
from wanflow.tasks import TASKS, Task

log = logging.getLogger(__name__)

VIDEO_INPUT = "has_video"  # in a job's params: it starts from an uploaded video (``Files.input_video``)
LAST_IMAGE = "last_image"  # in a job's params: it has a last image (``Files.last_image``), uploaded beside the first
JobStore = SqliteStore  # the default engine, under the name it had when it was the only one
__all__ = ["STATUSES", "TERMINAL", "BlockCheck", "Cancelled", "Files", "Interrupted", "JobProgress", "JobStore"]
__all__ += ["LAST_IMAGE", "Lost", "Models", "QueueFull", "new_id"]
STAGE_WEIGHTS = {"text": (0.0, 0.05), "denoise": (0.05, 0.85), "decode": (0.90, 0.10)}  # (start, share) of 0-1


class Cancelled(Exception):
    """Raised from the step callback when a client cancels the running job."""


class Interrupted(Exception):
    """Raised from the step callback when the server stops; the job goes back to the queue."""


class Lost(Exception):
    """Raised from the step callback when the worker's lease on the job ran out: another worker runs it now."""


class Files:
    """Where a job's files live: named by job id only, never by anything a client sent."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prepare(self, clean: bool = True) -> None:
        """The folders; with ``clean``, without the temporaries of videos whose writing a killed server left
        unfinished (only where nothing else writes: a folder shared with other workers keeps them, and each job's
        are removed when it ends, ``clean_job``)."""
        from wanflow.io.video import remove_all_stale_temps

        for sub in ("videos", "inputs", "previews"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        removed = remove_all_stale_temps(self.root / "videos") if clean else []
        if clean:
            from wanflow.server.previews import clear_previews

            clear_previews(self.root / "previews")
        if removed:
            log.info("removed %d unfinished video files of an earlier run", len(removed))

    def video(self, job_id: str) -> Path:
        return self.root / "videos" / f"{job_id}.mp4"

    def relative(self, path: Path) -> str:
        """What the job row records: the path inside the shared folder, the same for every machine."""
        return path.relative_to(self.root).as_posix()

    def output(self, job: Mapping) -> Path:
        """The job's video, where its row says (a job of an older store: where it was always written)."""
        return self.root / job["output"] if job.get("output") else self.video(job["id"])

    def clean_job(self, job_id: str) -> None:
        """The temporaries an earlier, killed attempt at the job left beside its video (it has ended now)."""
        from wanflow.io.video import remove_stale_temps

        remove_stale_temps(self.video(job_id))

    def image(self, job_id: str) -> Path:
        return self.root / "inputs" / f"{job_id}.png"

    def last_image(self, job_id: str) -> Path:
        """The last frame of a first-last frame job (its params say ``last_image: true``)."""
        return self.root / "inputs" / f"{job_id}_last.png"

    def input_video(self, job_id: str) -> Path:
        """The video a video-to-video job starts from, as uploaded (its params say ``has_video: true``)."""
        return self.root / "inputs" / f"{job_id}_video"

    def preview(self, job_id: str) -> Path:
        """The running job's live preview (``server.previews``), where every server can read it; gone at its end."""
        return self.root / "previews" / f"{job_id}.png"

    def comfy_prompt(self, job_id: str) -> Path:
        """The workflow and client of a job queued through the ComfyUI API (``server.comfy_api``)."""
        return self.root / "comfy" / "prompts" / f"{job_id}.json"

    def remove(self, job_id: str) -> None:
        """The job's files, and the temporaries an interrupted write of its video left."""
        from wanflow.io.video import remove_stale_temps

        inputs = (self.image(job_id), self.last_image(job_id), self.input_video(job_id))
        for path in (self.video(job_id), *inputs, self.preview(job_id), self.comfy_prompt(job_id)):
            path.unlink(missing_ok=True)
        remove_stale_temps(self.video(job_id))


class Models:
    """One pipeline per task, loaded once (lazily, from a loader) and kept warm. ``tasks``: the task (with its
    checkpoint's defaults) of a pipeline not loaded yet, so that requests are checked against it before it loads.
    ``prompt_extender``: what rewrites the prompts of requests that ask (``extend_prompt``), given to every pipeline."""

    def __init__(self, pipelines: Mapping[str, object], tasks: Mapping[str, Task] | None = None, prompt_extender=None):
        self.sources = dict(pipelines)
        self.prompt_extender = prompt_extender
        self.loaded: dict[str, object] = {}
        for name, pipe in pipelines.items():
            if hasattr(pipe, "task"):
                self.loaded[name] = self._with_extender(pipe)
        self.declared = dict(tasks or {})
        self.lock = threading.Lock()

    def _with_extender(self, pipe):
        if self.prompt_extender is not None:
            pipe.set_prompt_extender(self.prompt_extender)
        return pipe

    @property
    def names(self) -> list[str]:
        """The models' names (a job names the model it wants; a built-in is named as its task)."""
        return list(self.sources)

    def declarations(self) -> dict[str, dict]:
        """What a worker registers: each model's task, the defaults its checkpoint changes, and whether this worker
        extends prompts (JSON)."""
        out = {}
        for name in self.names:
            task = self.task(name)
            base = TASKS.get(task.name) if task is not None else None
            changed = {
                f: getattr(task, f) for f in Task.OVERRIDABLE if base is None or getattr(task, f) != getattr(base, f)
            }
            out[name] = {
                "task": task.name if task is not None else name,
                "overrides": _jsonable(changed),
                "extends_prompts": self.prompt_extender is not None,
            }
        return out

    def peek(self, task: str) -> object | None:
        return self.loaded.get(task)

    def task(self, name: str) -> Task | None:
        """The task of the loaded pipeline, else the one declared for it, else the registry's entry."""
        return getattr(self.peek(name), "task", None) or self.declared.get(name) or TASKS.get(name)

    def get(self, task: str) -> object:
        with self.lock:
            if task not in self.loaded:
                log.info("loading the %s pipeline", task)
                self.loaded[task] = self._with_extender(self.sources[task]())
            return self.loaded[task]


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class JobProgress(Progress):
    """Writes the pipeline's progress into the job's row (while ``owner`` runs it); stops the job when asked to."""

    def __init__(self, store: AnyStore, job_id: str, check: Callable[[], None], owner: str | None = None):
        self.store, self.job_id, self.check, self.owner = store, job_id, check, owner
        self.started = time.time()
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def start(self, stage: str, total: int) -> None:
        self.check()
        self.totals[stage], self.done[stage] = max(total, 1), 0
        fields = {"stage": stage}
        if stage == "denoise":
            fields |= {"step": 0, "steps": total}
        self.store.update(self.job_id, owner=self.owner, **fields)

    def advance(self, stage: str, **info: object) -> None:
        self.done[stage] = self.done.get(stage, 0) + 1
        begin, share = STAGE_WEIGHTS.get(stage, (0.0, 0.0))
        progress = min(1.0, begin + share * self.done[stage] / self.totals.get(stage, 1))
        elapsed = time.time() - self.started
        eta = elapsed / progress * (1 - progress) if progress > 0.05 else None
        fields = {"progress": progress, "stage": stage, "eta_seconds": eta}
        if stage == "denoise":
            fields |= {"step": self.done[stage], "expert": info.get("expert")}
        self.store.update(self.job_id, owner=self.owner, **fields)
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
