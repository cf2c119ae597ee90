"""The endpoints: the native job API (``/api``), OpenAI's video API shape (``/v1``), and the service routes (the
page, health, metrics). They read and write the job store; the worker thread does the generating."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from wanflow.pipelines.presets import PRESETS
from wanflow.sampling.comfy_schedules import SCHEDULERS
from wanflow.sampling.guidance import RULES
from wanflow.sampling.solvers import SOLVERS
from wanflow.server.context import Context
from wanflow.server.jobs import TERMINAL
from wanflow.server.metrics import metrics_text
from wanflow.server.previews import read_preview
from wanflow.server.schemas import GenerateRequest, JobView, VideoView, openai_fields
from wanflow.server.uploads import read_submission
from wanflow.server.views import openai_body, request_body, task_defaults

STATIC = Path(__file__).parent / "static"


def native_routes(api: APIRouter, ctx: Context) -> None:
    @api.get("/tasks")
    def tasks() -> dict:
        """The tasks this server runs, with their defaults and limits (for the web form); ``limits``: the server's;
        ``solvers``, ``presets``, ``guidance`` and ``schedulers``: the solvers, sampling presets, guidance rules and
        ComfyUI schedulers a job may name."""
        out = {}
        for task in ctx.catalog.names():
            spec = ctx.task(task)
            limits = dataclasses.asdict(ctx.limits_for(task))
            out[task] = None if spec is None else task_defaults(spec) | {"limits": limits}
        choices = {"solvers": list(SOLVERS), "presets": list(PRESETS), "guidance": list(RULES)}
        choices["schedulers"] = sorted(SCHEDULERS)
        return {"tasks": out, "limits": dataclasses.asdict(ctx.limits), **choices}

    @api.post("/jobs", status_code=202, response_model=JobView, openapi_extra=request_body(GenerateRequest))
    async def submit(request: Request) -> JobView:
        """Queue a generation: JSON, or multipart form fields with an ``image`` file (I2V, TI2V), a ``last_image``
        file (first-last frame, I2V-A14B) and a ``video`` file (video to video, with ``strength``)."""
        fields, inputs = await read_submission(request, ctx.limits, ctx.decodes)
        return ctx.job_view(await ctx.submit(fields, inputs))

    @api.get("/jobs", response_model=list[JobView])
    def list_jobs(status: str | None = None, limit: int = 200) -> list[JobView]:
        """Newest first."""
        return [ctx.job_view(job) for job in ctx.store.list(status, max(1, min(limit, 1000)))]

    @api.get("/jobs/{job_id}", response_model=JobView)
    def get_job(job_id: str) -> JobView:
        return ctx.job_view(ctx.job(job_id))

    @api.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request, preview: bool = False) -> StreamingResponse:
        """Server-sent events: ``progress`` with the job on every change, then ``end`` when it has finished; with
        ``?preview=true`` also ``preview`` (``{"step", "image"}``, a PNG data URL) when a running job has a new live
        preview (asked for, so a client that only follows progress gets no images)."""
        ctx.job(job_id)
        return StreamingResponse(
            _event_stream(ctx, job_id, request, preview),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.post("/jobs/{job_id}/cancel", response_model=JobView)
    def cancel(job_id: str) -> JobView:
        """A queued job is cancelled at once; a running one stops within one block of the model."""
        job = ctx.job(job_id)
        if job["status"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} has finished already ({job['status']})")
        ctx.cancel(job_id)
        return ctx.job_view(ctx.job(job_id))

    @api.get("/jobs/{job_id}/video", response_class=FileResponse)
    def video(job_id: str) -> FileResponse:
        return _video_file(ctx, job_id)

    @api.delete("/jobs/{job_id}")
    def delete(job_id: str) -> dict:
        """Removes a finished or queued job and its files; a running job must be cancelled first."""
        _delete(ctx, job_id)
        return {"id": job_id, "deleted": True}


def openai_routes(v1: APIRouter, ctx: Context) -> None:
    @v1.post("/videos", response_model=VideoView, openapi_extra=openai_body())
    async def create(request: Request) -> VideoView:
        """OpenAI's create video: ``prompt``, ``model`` (a task), ``size`` "WxH", ``seconds``, ``input_reference``."""
        fields, inputs = await read_submission(request, ctx.limits, ctx.decodes)
        default = ctx.catalog.names()[0] if ctx.catalog.names() else ""
        task = str(fields.get("model") or default)
        try:
            fields = openai_fields(fields, ctx.fps(task), default)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return ctx.video_view(await ctx.submit(fields, inputs))

    @v1.get("/videos")
    def list_videos(limit: int = 100) -> dict:
        jobs = ctx.store.list(None, max(1, min(limit, 1000)))
        return {"object": "list", "data": [ctx.video_view(job) for job in jobs]}

    @v1.get("/videos/{video_id}", response_model=VideoView)
    def retrieve(video_id: str) -> VideoView:
        return ctx.video_view(ctx.job(video_id))

    @v1.get("/videos/{video_id}/content", response_class=FileResponse)
    def content(video_id: str) -> FileResponse:
        return _video_file(ctx, video_id)

    @v1.delete("/videos/{video_id}")
    def delete(video_id: str) -> dict:
        _delete(ctx, video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}


def service_routes(app: FastAPI, ctx: Context, auth: list) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", tags=["service"])
    def health() -> dict:
        counts = ctx.store.counts()
        return {"status": "ok", "tasks": ctx.catalog.names(), "queue": counts["queued"], "running": counts["running"]}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=auth, tags=["service"])
    def metrics() -> str:
        """Prometheus text format: jobs by status; per model and worker the queue, running jobs, run times, lease
        expiries; the live workers."""
        return metrics_text(ctx.store)


async def _event_stream(ctx: Context, job_id: str, request: Request, previews: bool):
    last, quiet, shown = None, 0.0, None
    while True:
        job = ctx.store.get(job_id)
        if job is None:
            yield "event: deleted\ndata: {}\n\n"
            return
        view = ctx.job_view(job).model_dump_json()
        if view != last:
            yield f"event: progress\ndata: {view}\n\n"
            last, quiet = view, 0.0
        preview = read_preview(ctx.files.preview(job_id), shown) if previews and job["status"] == "running" else None
        if preview is not None:
            shown = preview[0]
            yield _preview_event(*preview[1:])
        if job["status"] in TERMINAL:
            yield f"event: end\ndata: {view}\n\n"
            return
        if await request.is_disconnected() or ctx.stopping:
            return
        await asyncio.sleep(ctx.interval)
        quiet += ctx.interval
        if quiet >= 15:  # a comment keeps proxies from closing an idle stream
            yield ": keep-alive\n\n"
            quiet = 0.0


def _preview_event(step: int, png: bytes) -> str:
    """A running job's live preview: the steps done and the picture as a PNG data URL."""
    data = json.dumps({"step": step, "image": "data:image/png;base64," + base64.b64encode(png).decode()})
    return f"event: preview\ndata: {data}\n\n"


def _video_file(ctx: Context, job_id: str) -> FileResponse:
    job = ctx.job(job_id)
    path = ctx.files.output(job)
    if job["status"] != "done" or not path.is_file():
        raise HTTPException(409, f"job {job_id} has no video ({job['status']})")
    return FileResponse(path, media_type="video/mp4", filename=f"{job['id']}.mp4")


def _delete(ctx: Context, job_id: str) -> None:
    job = ctx.job(job_id)
    if not ctx.store.delete(job["id"]):
        raise HTTPException(409, f"job {job_id} is running; cancel it first")
    ctx.files.remove(job["id"])
