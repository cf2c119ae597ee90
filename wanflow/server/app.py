"""The HTTP server: a native job API, OpenAI's video API shape beside it, metrics, and the web page at ``/``.

Endpoints read and write the job store; the one worker thread does the generating. Errors come back as
``{"detail": message}`` (with OpenAI's ``{"error": {...}}`` on ``/v1``); never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import logging
import re
import secrets
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from wanflow.configs import TASKS
from wanflow.server.jobs import TERMINAL, Files, JobStore, Models, QueueFull, Worker, new_id
from wanflow.server.schemas import IMAGE_TYPES, GenerateRequest, JobView, Limits, VideoView, openai_fields

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
JOB_ID = re.compile(r"[0-9a-f]{32}")
OPENAI_STATUS = {"queued": "queued", "running": "in_progress", "done": "completed"}
IMAGE_FIELDS = ("image", "input_reference")
MAX_FORM_BYTES = 1024 * 1024  # everything in a request besides the image


def create_app(
    pipelines: Mapping[str, object],
    db_path: str | Path,
    output_dir: str | Path,
    token: str | None = None,
    max_queue: int = 100,
    limits: Limits | None = None,
    max_attempts: int = 2,
    event_interval: float = 0.25,
) -> FastAPI:
    """The app. ``pipelines`` maps a task name to a loaded pipeline, or to a zero-argument loader called on first use.

    Jobs persist in the SQLite file ``db_path``; videos and input images are stored under ``output_dir``. With a
    ``token`` every API call needs ``Authorization: Bearer <token>`` (or ``?access_token=`` for <video> and SSE).
    """
    models = Models(pipelines)
    files = Files(output_dir)
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        files.prepare()
        store = JobStore(db_path, max_attempts=max_attempts)
        requeued = store.recover()
        if requeued:
            log.warning("recovered %d jobs that were running when the server stopped", len(requeued))
        worker = Worker(store, models, files)
        app.state.store, app.state.worker = store, worker
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(title="wanflow", summary="Wan 2.2 video generation server", lifespan=lifespan)
    _error_handlers(app)
    auth = [Depends(_bearer(token))]
    api = APIRouter(prefix="/api", dependencies=auth, tags=["jobs"])
    openai = APIRouter(prefix="/v1", dependencies=auth, tags=["OpenAI videos"])
    ctx = _Context(app, models, files, limits, max_queue, event_interval)
    _native_routes(api, ctx)
    _openai_routes(openai, ctx)
    _service_routes(app, ctx, auth)
    app.include_router(api)
    app.include_router(openai)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload * 4 // 3 + MAX_FORM_BYTES)
    return app


class BodyLimit:
    """Answers 413 once a request body passes ``max_bytes``, with or without a Content-Length header."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, 413)
            await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Context:
    """What the route functions share."""

    def __init__(self, app, models: Models, files: Files, limits: Limits, max_queue: int, interval: float):
        self.app, self.models, self.files, self.limits = app, models, files, limits
        self.max_queue, self.interval = max_queue, interval

    @property
    def store(self) -> JobStore:
        return self.app.state.store

    @property
    def worker(self) -> Worker:
        return self.app.state.worker

    def job(self, job_id: str) -> dict:
        job = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    def fps(self, task: str) -> int:
        pipe = self.models.peek(task)
        spec = getattr(pipe, "task", None) or TASKS.get(task)
        return spec.fps if spec is not None else 16

    async def submit(self, fields: dict, image: Image.Image | None) -> dict:
        """Validate, store the image, queue the job."""
        try:
            req = GenerateRequest.model_validate(fields)
        except ValidationError as e:
            raise HTTPException(422, _validation_message(e.errors())) from None
        if req.task not in self.models.tasks:
            raise HTTPException(422, f"unknown task {req.task!r}; this server runs {self.models.tasks}")
        try:
            req.check(self.limits)
            self.check_with_model(req, image)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        job_id = new_id()
        if image is not None:
            image.save(self.files.image(job_id), format="PNG")
        try:
            job = self.store.add(req.task, req.model_dump(exclude_none=True), image is not None, self.max_queue, job_id)
        except QueueFull as e:
            self.files.remove(job_id)
            raise HTTPException(429, str(e), headers={"Retry-After": "30"}) from None
        self.worker.wake()
        return job

    def check_with_model(self, req: GenerateRequest, image: Image.Image | None) -> None:
        """The pipeline's own checks when its model is loaded already; the image rule from the task otherwise."""
        pipe = self.models.peek(req.task)
        spec = getattr(pipe, "task", None) or TASKS.get(req.task)
        if spec is not None and spec.model_type == "i2v" and image is None:
            raise ValueError(f"{req.task} needs an image: upload one as 'image' (or 'input_reference')")
        if spec is not None and spec.model_type == "t2v" and image is not None:
            raise ValueError(f"{req.task} takes no image; use an i2v or ti2v model for image-to-video")
        if hasattr(pipe, "vae") and hasattr(pipe, "patch"):  # a WanPipeline (or a wrapper of one)
            from wanflow.pipelines.request import resolve

            kwargs = req.pipeline_kwargs()
            kwargs["seed"] = 0  # a seed is drawn when the job runs
            resolve(pipe.task, pipe.vae.cfg.stride[1], pipe.patch[1], req.prompt, image=image, **kwargs)


def _native_routes(api: APIRouter, ctx: _Context) -> None:
    @api.get("/tasks")
    def tasks() -> dict:
        """The tasks this server runs, with their defaults (for the web form)."""
        out = {}
        for task in ctx.models.tasks:
            spec = getattr(ctx.models.peek(task), "task", None) or TASKS.get(task)
            out[task] = None if spec is None else _defaults(spec)
        return {"tasks": out, "limits": dataclasses.asdict(ctx.limits)}

    @api.post("/jobs", status_code=202, response_model=JobView, openapi_extra=_request_body(GenerateRequest))
    async def submit(request: Request) -> JobView:
        """Queue a generation: JSON, or multipart form fields with an ``image`` file (I2V, TI2V)."""
        fields, image = await _read_submission(request, ctx.limits)
        return _job_view(await ctx.submit(fields, image))

    @api.get("/jobs", response_model=list[JobView])
    def list_jobs(status: str | None = None, limit: int = 200) -> list[JobView]:
        """Newest first."""
        return [_job_view(job) for job in ctx.store.list(status, max(1, min(limit, 1000)))]

    @api.get("/jobs/{job_id}", response_model=JobView)
    def get_job(job_id: str) -> JobView:
        return _job_view(ctx.job(job_id))

    @api.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: ``progress`` with the job on every change, then ``end`` when it has finished."""
        ctx.job(job_id)
        return StreamingResponse(
            _event_stream(ctx, job_id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.post("/jobs/{job_id}/cancel", response_model=JobView)
    def cancel(job_id: str) -> JobView:
        """A queued job is cancelled at once; a running one stops at its next step."""
        job = ctx.job(job_id)
        if job["status"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} has finished already ({job['status']})")
        ctx.worker.cancel(job_id)
        return _job_view(ctx.job(job_id))

    @api.get("/jobs/{job_id}/video", response_class=FileResponse)
    def video(job_id: str) -> FileResponse:
        return _video_file(ctx, job_id)

    @api.delete("/jobs/{job_id}")
    def delete(job_id: str) -> dict:
        """Removes a finished or queued job and its files; a running job must be cancelled first."""
        _delete(ctx, job_id)
        return {"id": job_id, "deleted": True}


def _openai_routes(v1: APIRouter, ctx: _Context) -> None:
    @v1.post("/videos", response_model=VideoView, openapi_extra=_openai_body())
    async def create(request: Request) -> VideoView:
        """OpenAI's create video: ``prompt``, ``model`` (a task), ``size`` "WxH", ``seconds``, ``input_reference``."""
        fields, image = await _read_submission(request, ctx.limits)
        task = str(fields.get("model") or ctx.models.tasks[0])
        try:
            fields = openai_fields(fields, ctx.fps(task), ctx.models.tasks[0])
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return _video_view(ctx, await ctx.submit(fields, image))

    @v1.get("/videos")
    def list_videos(limit: int = 100) -> dict:
        return {"object": "list", "data": [_video_view(ctx, j) for j in ctx.store.list(None, max(1, min(limit, 1000)))]}

    @v1.get("/videos/{video_id}", response_model=VideoView)
    def retrieve(video_id: str) -> VideoView:
        return _video_view(ctx, ctx.job(video_id))

    @v1.get("/videos/{video_id}/content", response_class=FileResponse)
    def content(video_id: str) -> FileResponse:
        return _video_file(ctx, video_id)

    @v1.delete("/videos/{video_id}")
    def delete(video_id: str) -> dict:
        _delete(ctx, video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}


def _service_routes(app: FastAPI, ctx: _Context, auth: list) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "tasks": ctx.models.tasks, "queue": ctx.store.counts()["queued"]}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=auth, tags=["service"])
    def metrics() -> str:
        """Prometheus text format."""
        counts = ctx.store.counts()
        total, count = ctx.store.generation_seconds()
        lines = ["# HELP wanflow_jobs Jobs by status.", "# TYPE wanflow_jobs gauge"]
        lines += [f'wanflow_jobs{{status="{status}"}} {n}' for status, n in counts.items()]
        lines += [
            "# HELP wanflow_queue_length Jobs waiting to run.",
            "# TYPE wanflow_queue_length gauge",
            f"wanflow_queue_length {counts['queued']}",
            "# HELP wanflow_generation_seconds Run time of the jobs that finished.",
            "# TYPE wanflow_generation_seconds summary",
            f"wanflow_generation_seconds_sum {total:.3f}",
            f"wanflow_generation_seconds_count {count}",
        ]
        return "\n".join(lines) + "\n"


async def _event_stream(ctx: _Context, job_id: str, request: Request):
    last, quiet = None, 0.0
    while True:
        job = ctx.store.get(job_id)
        if job is None:
            yield "event: deleted\ndata: {}\n\n"
            return
        view = _job_view(job).model_dump_json()
        if view != last:
            yield f"event: progress\ndata: {view}\n\n"
            last, quiet = view, 0.0
        if job["status"] in TERMINAL:
            yield f"event: end\ndata: {view}\n\n"
            return
        if await request.is_disconnected() or ctx.worker.stopping.is_set():
            return
        await asyncio.sleep(ctx.interval)
        quiet += ctx.interval
        if quiet >= 15:  # a comment keeps proxies from closing an idle stream
            yield ": keep-alive\n\n"
            quiet = 0.0


def _video_file(ctx: _Context, job_id: str) -> FileResponse:
    job = ctx.job(job_id)
    path = ctx.files.video(job["id"])
    if job["status"] != "done" or not path.is_file():
        raise HTTPException(409, f"job {job_id} has no video ({job['status']})")
    return FileResponse(path, media_type="video/mp4", filename=f"{job['id']}.mp4")


def _delete(ctx: _Context, job_id: str) -> None:
    job = ctx.job(job_id)
    if not ctx.store.delete(job["id"]):
        raise HTTPException(409, f"job {job_id} is running; cancel it first")
    ctx.files.remove(job["id"])


async def _read_submission(request: Request, limits: Limits) -> tuple[dict, Image.Image | None]:
    """Form fields (multipart, with one image file) or a JSON object (image as base64), and the decoded image."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = int(request.headers.get("content-length") or 0)
    if length > limits.max_upload * 4 // 3 + MAX_FORM_BYTES:
        raise HTTPException(413, f"request too large; images may be up to {limits.max_upload} bytes")
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _read_form(request, limits)
    if ctype == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object")
        data = next((body.pop(k) for k in IMAGE_FIELDS if body.get(k) is not None), None)
        return body, None if data is None else _decode_image(_base64(data, limits), limits)
    raise HTTPException(415, "send JSON (application/json) or a form (multipart/form-data, for an image upload)")


async def _read_form(request: Request, limits: Limits) -> tuple[dict, Image.Image | None]:
    try:
        form = await request.form(max_files=1, max_fields=40)
    except (HTTPException, _TooLarge):
        raise
    except Exception:
        raise HTTPException(400, "the form could not be read (one image file at most)") from None
    fields, image = {}, None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in IMAGE_FIELDS:
                raise HTTPException(422, f"unexpected file field {key!r}; upload the image as 'image'")
            image = await _read_upload(value, limits)
        elif value != "":
            if key in fields:
                raise HTTPException(422, f"field {key!r} given twice")
            fields[key] = value
    return fields, image


async def _read_upload(upload: UploadFile, limits: Limits) -> Image.Image:
    if (upload.content_type or "").lower() not in IMAGE_TYPES:
        raise HTTPException(415, f"image type {upload.content_type!r} not accepted; send one of {sorted(IMAGE_TYPES)}")
    data = await upload.read(limits.max_upload + 1)
    if len(data) > limits.max_upload:
        raise HTTPException(413, f"the image is over the limit of {limits.max_upload} bytes")
    return _decode_image(data, limits)


def _base64(data: object, limits: Limits) -> bytes:
    if not isinstance(data, str):
        raise HTTPException(422, "image must be a base64 string (or a data: URL)")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if header.split(";")[0][5:].lower() not in IMAGE_TYPES:
            raise HTTPException(415, f"image type {header[5:]!r} not accepted; send one of {sorted(IMAGE_TYPES)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image is not valid base64") from None
    if len(raw) > limits.max_upload:
        raise HTTPException(413, f"the image is over the limit of {limits.max_upload} bytes")
    return raw


def _decode_image(data: bytes, limits: Limits) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG", "WEBP"):
                raise HTTPException(415, f"image format {im.format} not accepted; send PNG, JPEG or WebP")
            if im.width * im.height > limits.max_image_pixels:
                raise HTTPException(413, f"the image is {im.width}x{im.height}, over {limits.max_image_pixels} pixels")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise HTTPException(422, "the image could not be decoded; send a PNG, JPEG or WebP file") from None


def _job_view(job: dict) -> JobView:
    fields = {k: job[k] for k in JobView.model_fields if k in job}
    fields["video_url"] = f"/api/jobs/{job['id']}/video" if job["status"] == "done" else None
    return JobView(**fields)


def _video_view(ctx: _Context, job: dict) -> VideoView:
    params = job["params"]
    meta = job["metadata"] or {}
    size = f"{params['width']}x{params['height']}" if "width" in params else None
    frames = meta.get("frames") or params.get("frames")
    seconds = None if frames is None else f"{(frames - 1) / ctx.fps(job['task']):g}"
    error = None
    if job["status"] in ("failed", "cancelled"):
        error = {"code": job["status"], "message": job["error"] or job["status"]}
    return VideoView(
        id=job["id"],
        model=job["task"],
        status=OPENAI_STATUS.get(job["status"], "failed"),
        progress=round(100 * job["progress"]),
        created_at=int(job["created_at"]),
        completed_at=None if job["finished_at"] is None else int(job["finished_at"]),
        size=size,
        seconds=seconds,
        error=error,
    )


def _defaults(spec) -> dict:
    guide = spec.guide_scale if isinstance(spec.guide_scale, tuple) else (spec.guide_scale,)
    return {
        "model_type": spec.model_type,
        "size": list(spec.size),
        "sizes": [list(s) for s in spec.sizes],
        "frames": spec.frames,
        "steps": spec.steps,
        "shift": spec.shift,
        "guide_scale": list(guide),
        "fps": spec.fps,
        "image": {"t2v": "none", "i2v": "required", "ti2v": "optional"}.get(spec.model_type, "optional"),
    }


def _bearer(token: str | None):
    def check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("access_token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )

    return check


def _validation_message(errors: list) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _error_body(request: Request, status: int, message: str) -> dict:
    body = {"detail": message}
    if request.url.path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body["error"] = {"message": message, "type": kind, "code": str(status)}
    return body


def _error_handlers(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(request, exc.status_code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(request, 422, _validation_message(exc.errors())), 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(_error_body(request, 500, "internal server error"), 500)


def _request_body(model) -> dict:
    schema = model.model_json_schema()
    form = dict(schema, properties=dict(schema["properties"], image={"type": "string", "format": "binary"}))
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}, "multipart/form-data": {"schema": form}},
        }
    }


def _openapi_props() -> dict:
    return {
        "prompt": {"type": "string"},
        "model": {"type": "string", "description": "a task this server runs (default: the first)"},
        "size": {"type": "string", "example": "1280x720"},
        "seconds": {"type": "string", "example": "4"},
        "input_reference": {"type": "string", "format": "binary"},
    }


def _openai_body() -> dict:
    schema = {"type": "object", "required": ["prompt"], "properties": _openapi_props()}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
