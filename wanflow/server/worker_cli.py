"""``wanflow worker --queue URL``: a GPU machine's worker on a queue that API servers (``wanflow serve --queue URL
--no_worker``) fill. It holds the built-in models (of ``--tasks``) or the ``--ckpt_dir`` models, claims their jobs,
heartbeats, and writes the videos into the ``--data`` folder that every server and worker shares. With
``--prompt_extend_model`` it also takes the jobs that ask for an extended prompt (only such workers take them).

A torchrun group is one worker: ``torchrun --nproc_per_node 8 -m wanflow worker --queue URL --ckpt_dir DIR
--ulysses_size 8``; rank 0 claims and reports, every rank runs the job (``server.group``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from wanflow.cli.runtime_flags import add_runtime_arguments, runtime_keywords
from wanflow.server.cli import add_extender_arguments
from wanflow.tasks import TASKS

log = logging.getLogger("wanflow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", required=True, help="the job store: postgresql://USER@HOST/DB (or sqlite:///PATH)")
    p.add_argument(
        "--ckpt_dir",
        "--ckpt-dir",
        dest="ckpt_dir",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="a checkpoint folder to hold, named NAME (default: its task); repeat for several (default: the built-ins)",
    )
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), help="the built-in models to hold (default: all)")
    p.add_argument("--data", default="wanflow-data", help="the folder all servers and workers share (videos, images)")
    p.add_argument(
        "--name",
        help="this worker's name in the queue (default: HOST-PID); a restart under the same name "
        "takes back the jobs it left running at once",
    )
    p.add_argument(
        "--lease_seconds",
        "--lease-seconds",
        dest="lease_seconds",
        type=float,
        default=60.0,
        help="a job whose worker stops heartbeating goes back to the queue after this (heartbeat: a third)",
    )
    p.add_argument(
        "--max_attempts",
        "--max-attempts",
        dest="max_attempts",
        type=int,
        default=2,
        help="a job whose workers stopped this many times fails with the reason",
    )
    add_runtime_arguments(p)  # how the models run: --offload, --device, --dtype, --fp8, --compile, --vae_tile, ...
    p.add_argument("--lora_dir", "--lora-dir", dest="lora_dir", help="folder of the LoRAs requests may name")
    p.add_argument("--ulysses_size", type=int, default=1, help="sequence-parallel ranks (torchrun; default 1)")
    p.add_argument("--cfg_parallel", action="store_true", help="conditional and unconditional passes on 2 rank groups")
    add_extender_arguments(p)  # this worker then takes the jobs that ask for an extended prompt


def check(args: argparse.Namespace) -> None:
    if args.lease_seconds < 1:
        raise ValueError(f"--lease_seconds must be at least 1, got {args.lease_seconds:g}")
    if args.max_attempts < 1:
        raise ValueError(f"--max_attempts must be at least 1, got {args.max_attempts}")
    if args.ckpt_dir and args.tasks:
        raise ValueError("--tasks picks built-in models; with --ckpt_dir the worker holds the checkpoints given")


def checkpoint_models(items: list[str], runtime: dict, prepare) -> tuple[dict, dict]:
    """The ``--ckpt_dir`` models, loaded now (kept warm), named NAME or by their task."""
    from wanflow.pipelines.pipeline import WanPipeline

    pipelines, tasks = {}, {}
    for item in items:
        name, folder = item.split("=", 1) if "=" in item and not Path(item).exists() else (None, item)
        pipe = prepare(WanPipeline.from_pretrained(folder, **runtime))
        name = name or pipe.task.name
        if name in pipelines:
            raise ValueError(f"two --ckpt_dir models are named {name!r}: name them, --ckpt_dir NAME=DIR")
        pipelines[name], tasks[name] = pipe, pipe.task
    return pipelines, tasks


def builtin_models(names: list[str] | None, runtime: dict, prepare) -> tuple[dict, dict]:
    """Loaders of the built-in models of ``names`` (default: all), each loaded on its first job."""
    from wanflow.server.cli import builtin_models as loaders_of

    loaders, tasks = {}, {}
    for name in names or [None]:
        more, declared = loaders_of(name, runtime)
        loaders |= {k: (lambda load=load: prepare(load())) for k, load in more.items()}
        tasks |= declared
    return loaders, tasks


def run(args: argparse.Namespace) -> int:
    check(args)
    from wanflow.cli.generate import launch
    from wanflow.server.cli import server_extender
    from wanflow.server.engines import open_store
    from wanflow.server.jobs import Files, Models
    from wanflow.server.loras import LoraLibrary

    args.dit_fsdp = args.t5_fsdp = False
    args.base_seed = None
    ctx = launch(args)  # joins torchrun's group when there is one
    logging.getLogger("wanflow").setLevel(logging.INFO)
    runtime = runtime_keywords(args)
    if ctx.is_distributed:
        runtime["device"] = runtime["device"] or ctx.device  # each rank its own, as generate does
    prepare = parallel(ctx, args)
    loras = LoraLibrary(args.lora_dir)
    if args.ckpt_dir:
        pipelines, tasks = checkpoint_models(args.ckpt_dir, runtime, prepare)
    else:
        pipelines, tasks = builtin_models(args.tasks, runtime, prepare)
    extender = server_extender(args)  # loaded before the video models: a model that cannot load is one line first
    models, files = Models(pipelines, tasks, extender), Files(args.data)
    files.prepare(clean=False)  # shared: another worker may be writing a video there now
    if not ctx.is_rank0:
        from wanflow.server.group import Group, follow

        follow(Group(ctx), models, files, loras)
        return 0
    store = open_store(args.queue, max_attempts=args.max_attempts)
    return serve_jobs(args, ctx, store, models, files, loras)


def parallel(ctx, args: argparse.Namespace):
    """What is done to each model once loaded: spread over the torchrun group, if there is one."""
    if not ctx.is_distributed:
        return lambda pipe: pipe
    from wanflow.pipelines.parallel import parallelize_pipeline

    return lambda pipe: parallelize_pipeline(pipe, ctx, ulysses_size=args.ulysses_size, cfg_parallel=args.cfg_parallel)


def serve_jobs(args, ctx, store, models, files, loras) -> int:
    """Rank 0: runs the worker until SIGTERM or SIGINT; the job running then goes back to the queue."""
    from wanflow.server.group import Group
    from wanflow.server.worker import Worker, default_name

    group = Group(ctx) if ctx.is_distributed else None
    name = args.name or default_name()
    worker = Worker(store, models, files, loras=loras, name=name, lease_seconds=args.lease_seconds, group=group)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("worker %s (pid %d) holds %s; waiting for jobs", name, os.getpid(), ", ".join(models.names))
    worker.start()
    while not stop.wait(0.5) and worker.is_alive():
        pass
    worker.stop(timeout=None)
    store.close()
    return 0 if stop.is_set() else 1  # else the worker thread died (its error is in the log)
