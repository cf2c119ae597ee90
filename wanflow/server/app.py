"""The HTTP server: a native job API, OpenAI's video API shape beside it, metrics, and the web page at ``/``.

``create_app`` wires the pieces: the job store and the one worker thread (``jobs``), the routes (``routes``), the
request reading (``uploads``), the views (``views``) and the error answers (``errors``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from wanflow.server.context import Context
from wanflow.server.errors import bearer, install_error_handlers
from wanflow.server.jobs import Files, JobStore, Models, Worker
from wanflow.server.loras import LoraLibrary, lora_routes
from wanflow.server.routes import STATIC, native_routes, openai_routes, service_routes
from wanflow.server.schemas import Limits
from wanflow.server.uploads import MAX_FORM_BYTES, BodyLimit

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9a-f]{32}")
IMAGE_HINT = "upload one as 'image' (or 'input_reference')"


def create_app(
    pipelines: Mapping[str, object],
    db_path: str | Path,
    output_dir: str | Path,
    token: str | None = None,
    max_queue: int = 100,
    limits: Limits | None = None,
    max_attempts: int = 2,
    event_interval: float = 0.25,
    lora_dir: str | Path | None = None,
) -> FastAPI:
    """The app. ``pipelines`` maps a task name to a loaded pipeline, or to a zero-argument loader called on first use.

    Jobs persist in the SQLite file ``db_path``; videos and input images are stored under ``output_dir``. With a
    ``token`` every API call needs ``Authorization: Bearer <token>`` (or ``?access_token=`` for <video> and SSE).
    ``lora_dir``: the folder of the LoRAs requests may name (``server.loras``).
    """
    models = Models(pipelines)
    files = Files(output_dir)
    limits = limits or Limits()
    loras = LoraLibrary(lora_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        files.prepare()
        store = JobStore(db_path, max_attempts=max_attempts)
        requeued = store.recover()
        if requeued:
            log.warning("recovered %d jobs that were running when the server stopped", len(requeued))
        worker = Worker(store, models, files, loras=loras)
        app.state.store, app.state.worker = store, worker
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(title="wanflow", summary="Wan 2.2 video generation server", lifespan=lifespan)
    install_error_handlers(app)
    app.state.loras = loras
    auth = [Depends(bearer(token))]
    api = APIRouter(prefix="/api", dependencies=auth, tags=["jobs"])
    openai = APIRouter(prefix="/v1", dependencies=auth, tags=["OpenAI videos"])
    ctx = Context(app, models, files, limits, max_queue, event_interval)
    native_routes(api, ctx)
    lora_routes(api, loras)
    openai_routes(openai, ctx)
    service_routes(app, ctx, auth)
    app.include_router(api)
    app.include_router(openai)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload * 4 // 3 + MAX_FORM_BYTES)
    return app
