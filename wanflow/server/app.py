"""The HTTP server: a native job API, OpenAI's video API shape beside it, metrics, and the web page at ``/``.

``create_app`` wires the pieces: the job store (``store``: SQLite by default, PostgreSQL to share it with other servers
and workers), this server's own worker thread (``worker``; none with ``run_jobs=False``), the models offered
(``catalog``: this server's and those the workers registered), the routes (``routes``), the
request reading (``uploads``), the views (``views``), the error answers and the token (``errors``), the checks that
keep other web pages out (``guard``) and the access log (``access_log``). The API docs at ``/docs`` are served from
this machine (``fastapi_offline`` ships Swagger UI's files), so they work without internet.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import CapacityLimiter
from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from wanflow.server.access_log import quiet_access_log
from wanflow.server.catalog import Catalog
from wanflow.server.comfy_api import comfy_routes
from wanflow.server.context import Context
from wanflow.server.engines import open_store
from wanflow.server.errors import bearer, install_error_handlers
from wanflow.server.guard import Guard, Hosts
from wanflow.server.jobs import Files, Models
from wanflow.server.loras import LoraLibrary, lora_routes
from wanflow.server.routes import STATIC, native_routes, openai_routes, service_routes
from wanflow.server.schemas import Limits
from wanflow.server.uploads import BodyLimit
from wanflow.server.worker import Worker, default_name
from wanflow.server.workflow import workflow_routes
from wanflow.tasks import Task

log = logging.getLogger(__name__)


def create_app(
    pipelines: Mapping[str, object],
    db_path: str | Path,
    output_dir: str | Path,
    token: str | None = None,
    max_queue: int = 100,
    limits: Limits | None = None,
    max_attempts: int = 2,
    event_interval: float = 0.25,
    allowed_hosts: Hosts | None = None,
    tasks: Mapping[str, Task] | None = None,
    lora_dir: str | Path | None = None,
    run_jobs: bool = True,
    lease_seconds: float = 60.0,
    worker_name: str | None = None,
    prompt_extender=None,
) -> FastAPI:
    """The app. ``pipelines`` maps a task name to a loaded pipeline, or to a zero-argument loader called on first use
    (``tasks``: the task each loader's model runs, with its checkpoint's defaults, to check requests before it loads).

    Jobs persist in ``db_path``: a SQLite file, or a ``postgresql://`` URL of a queue shared with other API servers
    and workers (``wanflow worker``); videos and input images are stored under ``output_dir`` (a folder every server
    and worker of a shared queue sees). ``run_jobs=False``: a stateless API server, the workers run the jobs;
    otherwise this process runs its own worker on ``pipelines`` (named ``worker_name``, with leases of
    ``lease_seconds`` on a shared queue). With a
    ``token`` every API call needs ``Authorization: Bearer <token>`` (or ``?access_token=`` for <video> and SSE).
    ``allowed_hosts``: the names the ``Host`` header may carry (default: those of a server bound to 127.0.0.1).
    ``lora_dir``: the folder of the LoRAs requests may name (``server.loras``). ``prompt_extender``: what extends
    the prompts of requests with ``extend_prompt`` (``prompts.extend``); without one they are refused.
    """
    models = Models(pipelines, tasks, prompt_extender)
    files = Files(output_dir)
    limits = limits or Limits()
    loras = LoraLibrary(lora_dir)
    worker = {"run_jobs": run_jobs, "lease_seconds": lease_seconds, "name": worker_name}
    app = FastAPIOffline(
        title="wanflow",
        summary="Wan 2.2 video generation server",
        lifespan=_lifespan(models, files, db_path, max_attempts, limits, loras, worker),
        static_url="/docs-static",
    )
    install_error_handlers(app)
    app.state.loras = loras
    auth = [Depends(bearer(token))]
    api = APIRouter(prefix="/api", dependencies=auth, tags=["jobs"])
    openai = APIRouter(prefix="/v1", dependencies=auth, tags=["OpenAI videos"])
    catalog = Catalog(models, lambda: getattr(app.state, "store", None), serves=run_jobs)
    ctx = Context(app, catalog, files, limits, max_queue, event_interval)
    native_routes(api, ctx)
    lora_routes(api, loras)
    workflow_routes(api, ctx, loras)
    openai_routes(openai, ctx)
    service_routes(app, ctx, auth)
    comfy_routes(app, ctx, loras, auth, token)
    app.include_router(api)
    app.include_router(openai)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(Guard, hosts=allowed_hosts or Hosts.for_bind("127.0.0.1"))  # the outermost: checked first
    return app


def _lifespan(
    models: Models, files: Files, queue: str | Path, max_attempts: int, limits: Limits, loras: LoraLibrary, worker: dict
):
    """Start: the job store, this server's worker (recovering the jobs it left running), the decode slots and the
    quiet access log; stop: the worker (at its next check), then the store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = open_store(queue, max_attempts=max_attempts)
        alone = store.ENGINE == "sqlite"  # the file is this server's: whatever ran when it stopped ran here
        files.prepare(clean=alone and worker["run_jobs"])
        app.state.store, app.state.stopping = store, threading.Event()
        app.state.worker = _worker(store, models, files, loras, worker, alone) if worker["run_jobs"] else None
        app.state.decodes = CapacityLimiter(limits.max_decodes)
        # The startup heap (torch, transformers and the rest, a few million objects) out of the collector's scans:
        # a full collection over it paused every thread for 0.2-0.4 s while requests came in (GET /health under
        # image uploads and running jobs, tests/server/test_hardening.py), at moments that moved with unrelated code
        gc.freeze()
        access = quiet_access_log()  # (uvicorn has configured its loggers by now)
        if app.state.worker is not None:
            app.state.worker.start()
        try:
            yield
        finally:
            app.state.stopping.set()
            if app.state.worker is not None:
                app.state.worker.stop()
            store.close()
            logging.getLogger("uvicorn.access").removeFilter(access)

    return lifespan


def _worker(store, models: Models, files: Files, loras: LoraLibrary, options: dict, alone: bool) -> Worker:
    name = options["name"] or ("local" if alone else default_name())
    return Worker(
        store, models, files, loras=loras, name=name, lease_seconds=options["lease_seconds"], recover_all=alone
    )
