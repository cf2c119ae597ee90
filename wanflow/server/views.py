"""How jobs and tasks are shown: the native job view, OpenAI's video object, a task's defaults, and the request
bodies of the OpenAPI document."""

from __future__ import annotations

from wanflow.server.schemas import JobView, VideoView
from wanflow.tasks import Task

OPENAI_STATUS = {"queued": "queued", "running": "in_progress", "done": "completed"}


def job_view(job: dict, waiting: str | None = None) -> JobView:
    """The job, its seeds as strings: a seed is up to 2^64 - 1 and a JavaScript number holds integers up to 2^53 only,
    so a page would show (and a user copy) 1697222650902034796 as 1697222650902034700."""
    fields = {k: job[k] for k in JobView.model_fields if k in job}
    fields["video_url"] = f"/api/jobs/{job['id']}/video" if job["status"] == "done" else None
    fields["seed"] = None if job.get("seed") is None else str(job["seed"])
    fields["waiting"] = waiting
    meta = job.get("metadata") or {}
    if meta.get("prompt_extended"):
        fields["extended_prompt"] = meta["prompt"]
    seeds = {k: str(job["params"][k]) for k in ("seed", "low_noise_seed") if job["params"].get(k) is not None}
    if seeds:
        fields["params"] = dict(job["params"], **seeds)
    return JobView(**fields)


def video_view(job: dict, fps: int) -> VideoView:
    params = job["params"]
    meta = job["metadata"] or {}
    size = f"{params['width']}x{params['height']}" if "width" in params else None
    frames = meta.get("frames") or params.get("frames")
    seconds = None if frames is None else f"{(frames - 1) / (params.get('fps') or fps):g}"
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


def task_defaults(spec: Task) -> dict:
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
        "image": spec.image,
        "last_image": spec.last_image,
    }


def request_body(model) -> dict:
    schema = model.model_json_schema()
    image = {"type": "string", "format": "binary"}
    form = dict(schema, properties=dict(schema["properties"], image=image, last_image=image, video=image))
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


def openai_body() -> dict:
    schema = {"type": "object", "required": ["prompt"], "properties": _openapi_props()}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
