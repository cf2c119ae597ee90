"""What the route functions share: the app's store and worker, the models offered, the limits, and submitting a job."""

from __future__ import annotations

import dataclasses
import re

from anyio import CapacityLimiter, to_thread
from fastapi import HTTPException
from pydantic import ValidationError

from wanflow.pipelines.request import Request, resolve
from wanflow.server.catalog import Catalog
from wanflow.server.errors import validation_message
from wanflow.server.jobs import LAST_IMAGE, VIDEO_INPUT, Files, QueueFull, new_id
from wanflow.server.loras import check_loras
from wanflow.server.schemas import GenerateRequest, JobView, Limits, VideoView
from wanflow.server.store import JobStore
from wanflow.server.video_upload import NO_INPUTS, Inputs
from wanflow.server.views import job_view, video_view
from wanflow.server.worker import Worker
from wanflow.tasks import Task

JOB_ID = re.compile(r"[0-9a-f]{32}")
IMAGE_HINT = "an image: upload one as 'image' (or 'input_reference')"


class Context:
    """What the route functions share."""

    def __init__(self, app, catalog: Catalog, files: Files, limits: Limits, max_queue: int, interval: float):
        self.app, self.catalog, self.files, self.limits = app, catalog, files, limits
        self.max_queue, self.interval = max_queue, interval

    @property
    def store(self) -> JobStore:
        return self.app.state.store

    @property
    def worker(self) -> Worker | None:
        """This server's own worker; None on an API server whose jobs the workers run."""
        return self.app.state.worker

    @property
    def stopping(self) -> bool:
        return self.app.state.stopping.is_set()

    @property
    def decodes(self) -> CapacityLimiter:
        """How many input images are decoded (or checked and saved) at once, in worker threads."""
        return self.app.state.decodes

    def job(self, job_id: str) -> dict:
        job = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def task(self, name: str) -> Task | None:
        """The task of a model (with its checkpoint's defaults): this server's, or one a worker registered."""
        return self.catalog.task(name)

    def limits_for(self, name: str) -> Limits:
        """The server's limits, within what the task's model was trained for (``Limits.for_task``)."""
        return self.limits.for_task(self.task(name))

    def fps(self, task: str) -> int:
        spec = self.task(task)
        return spec.fps if spec is not None else 16

    def video_view(self, job: dict) -> VideoView:
        return video_view(job, self.fps(job.get("model") or job["task"]))

    def job_view(self, job: dict) -> JobView:
        return job_view(job, self.catalog.waiting(job))

    def cancel(self, job_id: str) -> None:
        """Through the store, which any worker reads (and a PostgreSQL one is told at once); this server's own worker
        is told directly."""
        if self.store.request_cancel(job_id) == "requested" and self.worker is not None:
            self.worker.cancel(job_id)

    async def submit(self, fields: dict, inputs: Inputs = NO_INPUTS, job_id: str | None = None) -> dict:
        """Validate, store the uploads, queue the job (as ``job_id``: a new id's form, for the ComfyUI API's prompt
        ids); its params say ``last_image: true`` when it has a last frame (first-last frame) and ``has_video: true``
        when it starts from a video (video to video)."""
        req = self.parse(fields)
        job_id = job_id or new_id()
        if not inputs.any():
            self.check(req)
        else:  # a big image takes a while to check (a copy) and to write: not on the event loop
            await to_thread.run_sync(self.check_and_save, req, inputs, job_id, limiter=self.decodes)
        spec, params = self.task(req.task), req.model_dump(exclude_none=True)
        params |= {LAST_IMAGE: True} if inputs.last is not None else {}
        params |= {VIDEO_INPUT: True} if inputs.video is not None else {}
        task = spec.name if spec is not None else req.task
        try:
            job = self.store.add(task, params, inputs.image is not None, self.max_queue, job_id, model=req.task)
        except QueueFull as e:
            self.files.remove(job_id)
            raise HTTPException(429, str(e), headers={"Retry-After": "30"}) from None
        if self.worker is not None:
            self.worker.wake()
        return job

    def parse(self, fields: dict) -> GenerateRequest:
        """The request, its ``task`` the name of the model that runs it (a task's name means its first model); ``task``
        may be left out on a server of one model. Every error is reported at once."""
        tasks = self.catalog.names()
        if fields.get("task") is None and len(tasks) == 1:
            fields = dict(fields, task=tasks[0])
        errors = []
        if fields.get("task") is None:
            errors.append(f"task: Field required (this server runs {', '.join(tasks)})")
        elif self.catalog.model_for(str(fields["task"])) is None:
            errors.append(f"unknown task {fields['task']!r}; this server runs {tasks}")
        else:
            fields = dict(fields, task=self.catalog.model_for(str(fields["task"])))
        try:
            req = GenerateRequest.model_validate(fields)
        except ValidationError as e:
            errors.append(validation_message(e.errors()))
        if errors:
            raise HTTPException(422, "; ".join(errors))
        return req

    def check(self, req: GenerateRequest, inputs: Inputs = NO_INPUTS) -> None:
        """The server's limits for the task's model, then the model's own checks; 422 with what is wrong."""
        limits, why = self.limits_for(req.task), ""
        if limits != self.limits:
            spec = self.task(req.task)
            sizes = ", ".join(f"{w}x{h}" for w, h in spec.sizes)
            why = f"; the {req.task} model here was trained at {sizes} and {spec.frames} frames"
        try:
            req.check(limits, why)
            redo = inputs.video is not None and not req.extend
            if redo and req.frames is None and inputs.video.frames > limits.max_frames:
                raise ValueError(
                    f"the video has more than {limits.max_frames} frames, the limit here{why}: pass frames to take its "
                    "first ones"
                )
            if req.extend_prompt and not self.catalog.extends_prompts(req.task):
                raise ValueError(self.catalog.no_extender(req.task))
            resolved = self.check_with_model(req, inputs)
            if req.extend and resolved is not None and resolved.frames > limits.max_frames:  # (its whole length)
                raise ValueError(f"frames {resolved.frames} is over the limit of {limits.max_frames}{why}")
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    def check_and_save(self, req: GenerateRequest, inputs: Inputs, job_id: str) -> None:
        """The uploads are all checked before any is written: a refused request leaves no files."""
        self.check(req, inputs)
        if inputs.image is not None:  # None only for a task outside the registry: its pipeline refuses it when it runs
            inputs.image.save(self.files.image(job_id), format="PNG")
        if inputs.last is not None:
            inputs.last.save(self.files.last_image(job_id), format="PNG")
        if inputs.video is not None:
            self.files.input_video(job_id).write_bytes(inputs.video.data)

    def check_with_model(self, req: GenerateRequest, inputs: Inputs) -> Request | None:
        """The pipeline's own checks (``resolve``), with the loaded model's task and size rule when it is loaded; a
        video is checked by its frame count and size (``UploadedVideo.stand_in``), its frames read when the job runs.
        The resolved request, or None for a task outside the registry."""
        task = self.task(req.task)
        if task is None:
            return None  # a task outside the registry: its pipeline checks the request when the job runs
        loaded = self.catalog.peek(req.task)
        multiple = getattr(loaded, "size_multiple", None)
        frames = None if inputs.video is None else inputs.video.stand_in()
        options = dataclasses.replace(req.options(inputs.image, inputs.last, frames), seed=0)  # the seed: at run time
        resolved = resolve(options, task, multiple, image_hint=IMAGE_HINT)
        if hasattr(loaded, "check_request"):
            loaded.check_request(resolved)
        check_loras(getattr(self.app.state, "loras", None), req.loras, loaded, resolved)
        return resolved
