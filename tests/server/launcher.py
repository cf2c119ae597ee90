"""Runs the server on tiny checkpoints for the tests: ``python -m tests.server.launcher --port P --data DIR ...``."""

from __future__ import annotations

import argparse
import logging
import time

import torch
import uvicorn

from wanflow.pipelines.pipeline import WanPipeline
from wanflow.server.app import create_app
from wanflow.server.schemas import Limits


class Slowed:
    """A pipeline whose every denoising step takes at least ``delay`` seconds (so a test can catch it running)."""

    def __init__(self, pipe: WanPipeline, delay: float):
        self.pipe, self.delay, self.task = pipe, delay, pipe.task

    def __call__(self, prompt, *, callback=None, **kwargs):
        def slow(step):
            time.sleep(self.delay)
            if callback is not None:
                callback(step)

        return self.pipe(prompt, callback=slow, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def loader(folder: str, delay: float):
    def load():
        pipe = WanPipeline.from_pretrained(folder)
        return Slowed(pipe, delay) if delay else pipe

    return load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--ckpt", action="append", default=[], help="TASK=FOLDER")
    p.add_argument("--step_delay", type=float, default=0.0)
    p.add_argument("--token")
    p.add_argument("--max_queue", type=int, default=100)
    p.add_argument("--max_attempts", type=int, default=2)
    p.add_argument("--lora_dir")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    pipelines = {}
    for item in args.ckpt:
        task, folder = item.split("=", 1)
        pipelines[task] = loader(folder, args.step_delay)
    limits = Limits(max_side=256, max_pixels=128 * 128, max_frames=9, max_steps=20, max_upload=200_000)
    app = create_app(
        pipelines,
        f"{args.data}/jobs.sqlite",
        args.data,
        token=args.token,
        max_queue=args.max_queue,
        limits=limits,
        max_attempts=args.max_attempts,
        event_interval=0.05,
        lora_dir=args.lora_dir,
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
