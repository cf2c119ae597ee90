"""``wanflow serve --ckpt_dir DIR``: load the model once and serve it (web page at ``/``, API docs at ``/docs``)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from wanflow.runtime.offload import POLICIES
from wanflow.tasks import TASKS

log = logging.getLogger("wanflow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt_dir", "--ckpt-dir", dest="ckpt_dir", required=True, help="checkpoint folder or repo id")
    p.add_argument("--task", choices=sorted(TASKS), help="the task (default: the one the checkpoint holds)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="bearer token clients must send; required when --host is not a loopback address")
    p.add_argument("--data", default="wanflow-data", help="folder for the job database and the videos")
    p.add_argument("--max_queue", "--max-queue", dest="max_queue", type=int, default=100, help="jobs waiting at most")
    p.add_argument("--offload", choices=POLICIES, help="expert placement policy (default per device)")
    p.add_argument("--lora_dir", "--lora-dir", dest="lora_dir", help="folder of the LoRAs requests may name")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve other machines without a token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} lets other machines in: set --token (clients send 'Authorization: Bearer')")


def run(args: argparse.Namespace) -> int:
    check_exposure(args.host, args.token)
    from wanflow.server.loras import LoraLibrary

    LoraLibrary(args.lora_dir)  # a wrong --lora_dir fails before the model loads
    import uvicorn

    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.server.app import create_app

    logging.getLogger("wanflow").setLevel(logging.INFO)
    kwargs = {"offload": args.offload} if args.offload else {}
    pipe = WanPipeline.from_pretrained(args.ckpt_dir, task=args.task, **kwargs)  # loaded once, kept warm
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    app = create_app(
        {pipe.task.name: pipe},
        data / "jobs.sqlite",
        data,
        token=args.token,
        max_queue=args.max_queue,
        lora_dir=args.lora_dir,
    )
    log.info("serving %s on http://%s:%d (web page at /, API docs at /docs)", pipe.task.name, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=5, log_level="info")
    return 0
