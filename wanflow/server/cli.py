"""``wanflow serve [--ckpt_dir DIR]``: serve a model, loaded once (web page at ``/``, API docs at ``/docs``).

Without ``--ckpt_dir`` the server runs the built-in models, one per task (or the one of ``--task``), each loaded on
its first job, as ``wanflow generate`` does without one.

Past one machine: ``wanflow serve --queue postgresql://... --no_worker --data SHARED`` is a stateless API server (run
several behind a load balancer) and ``wanflow worker --queue postgresql://... --data SHARED`` runs the jobs on each GPU
machine; they share the PostgreSQL queue and the ``SHARED`` folder.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from wanflow.cli.runtime_flags import add_runtime_arguments, runtime_keywords
from wanflow.prompts.extend import METHODS
from wanflow.tasks import TASKS

log = logging.getLogger("wanflow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt_dir", "--ckpt-dir", dest="ckpt_dir", help="checkpoint folder or repo id (default: the built-in models)"
    )
    p.add_argument(
        "--task", choices=sorted(TASKS), help="the task (default: the one the checkpoint holds; all built-ins)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="bearer token clients must send; required when --host is not a loopback address")
    p.add_argument(
        "--allowed_hosts",
        "--allowed-hosts",
        dest="allowed_hosts",
        nargs="+",
        default=[],
        metavar="NAME",
        help="host names clients may reach the server by, besides its address and localhost (e.g. a proxy's "
        "name, whose pages may then also submit jobs; '*' for any). Other names are refused: a web page could reach "
        "this server through one (DNS rebinding)",
    )
    p.add_argument("--data", default="wanflow-data", help="folder for the job database and the videos")
    p.add_argument("--max_queue", "--max-queue", dest="max_queue", type=int, default=100, help="jobs waiting at most")
    add_runtime_arguments(p)  # how the models run: --offload, --device, --dtype, --fp8, --compile, --vae_tile, ...
    p.add_argument("--lora_dir", "--lora-dir", dest="lora_dir", help="folder of the LoRAs requests may name")
    p.add_argument(
        "--queue",
        help="the job store: postgresql://USER@HOST/DB, shared with other servers and workers (default: "
        "DATA/jobs.sqlite, this server's own)",
    )
    p.add_argument(
        "--no_worker",
        "--no-worker",
        dest="no_worker",
        action="store_true",
        help="run no jobs here: an API server of the models the workers of --queue hold (wanflow worker)",
    )
    p.add_argument(
        "--lease_seconds",
        "--lease-seconds",
        dest="lease_seconds",
        type=float,
        default=60.0,
        help="with a shared --queue: a job of this server's worker goes back to the queue this long after it stopped",
    )
    add_extender_arguments(p)


def add_extender_arguments(p: argparse.ArgumentParser) -> None:
    """The prompt extender's flags, for ``serve`` and ``worker`` (prompts are extended where the jobs run)."""
    p.add_argument(
        "--prompt_extend_model",
        "--prompt-extend-model",
        dest="prompt_extend_model",
        help="a chat model (folder or repo id) that extends the prompts of requests with extend_prompt",
    )
    p.add_argument(
        "--prompt_extend_method",
        "--prompt-extend-method",
        dest="prompt_extend_method",
        choices=METHODS,
        help="local (default with --prompt_extend_model) or dashscope (DASH_API_KEY)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve other machines without a token, and a token no header can carry."""
    from wanflow.server.errors import check_token

    check_token(token)
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} lets other machines in: set --token (clients send 'Authorization: Bearer')")


def builtin_models(only: str | None, runtime: dict) -> tuple[dict, dict]:
    """Loaders of the built-in models (of every task, or of ``only``) and their tasks, read from their folders now."""
    from wanflow.builtin import FOLDERS, builtin_checkpoint
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.pipelines.pipeline import WanPipeline, checkpoint_task

    loaders, tasks = {}, {}
    for name in [only] if only else list(FOLDERS):
        layout = detect_layout(builtin_checkpoint(name))
        tasks[name] = checkpoint_task(layout, TASKS[name])
        loaders[name] = lambda layout=layout, task=tasks[name]: WanPipeline.from_pretrained(layout, task, **runtime)
    return loaders, tasks


def check_queue(args: argparse.Namespace) -> None:
    if args.no_worker and not args.queue:
        raise ValueError("--no_worker needs a --queue shared with workers (wanflow worker --queue URL)")
    if args.no_worker and (args.ckpt_dir or args.task):
        raise ValueError("--no_worker serves the models the workers hold: give --ckpt_dir and --task to wanflow worker")
    if args.no_worker and (args.prompt_extend_model or args.prompt_extend_method):
        raise ValueError(
            "--no_worker runs no jobs, and prompts are extended where the jobs run: give --prompt_extend_model to "
            "wanflow worker"
        )


def server_extender(args: argparse.Namespace):
    """The prompt extender ``--prompt_extend_model`` / ``--prompt_extend_method`` ask for, loaded; None without them."""
    if args.prompt_extend_model is None and args.prompt_extend_method is None:
        return None
    from wanflow.prompts.extend import make_extender

    extender = make_extender(args.prompt_extend_method or "local", args.prompt_extend_model)
    return extender.load() if hasattr(extender, "load") else extender


def run(args: argparse.Namespace) -> int:
    check_exposure(args.host, args.token)
    check_queue(args)
    if args.queue:
        from wanflow.server.engines import open_store

        open_store(args.queue).close()  # a wrong URL or a database out of reach: one line, before any model loads
    from wanflow.server.loras import LoraLibrary

    LoraLibrary(args.lora_dir)  # a wrong --lora_dir fails before the model loads
    extender = server_extender(args)  # as does a prompt extension model that cannot be loaded
    import uvicorn

    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.server.app import create_app
    from wanflow.server.guard import Hosts

    logging.getLogger("wanflow").setLevel(logging.INFO)
    runtime = runtime_keywords(args)
    if args.no_worker:
        pipelines, tasks = {}, None
        log.info("no worker here: serving the models the workers of the queue hold")
    elif args.ckpt_dir is None:
        pipelines, tasks = builtin_models(args.task, runtime)
        log.info("no --ckpt_dir: serving the built-in models (%s), each loaded on its first job", ", ".join(tasks))
    else:
        pipe = WanPipeline.from_pretrained(args.ckpt_dir, task=args.task, **runtime)  # loaded once, kept warm
        pipelines, tasks = {pipe.task.name: pipe}, None
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    hosts = Hosts.for_bind(args.host, args.allowed_hosts)
    app = create_app(
        pipelines,
        args.queue or data / "jobs.sqlite",
        data,
        args.token,
        args.max_queue,
        allowed_hosts=hosts,
        tasks=tasks,
        lora_dir=args.lora_dir,
        run_jobs=not args.no_worker,
        lease_seconds=args.lease_seconds,
        prompt_extender=extender,
    )
    log.info(
        "serving %s on http://%s:%d (web page at /, API docs at /docs)",
        ", ".join(pipelines) or "the workers' models",
        args.host,
        args.port,
    )
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=5, log_level="info")
    return 0
