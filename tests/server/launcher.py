"""Runs the server on tiny checkpoints for the tests: ``python -m tests.server.launcher --port P --data DIR ...``."""

from __future__ import annotations

import argparse
import logging
import time

import torch
import uvicorn

from wanflow.checkpoints.layouts import detect_layout
from wanflow.pipelines.pipeline import WanPipeline, checkpoint_task
from wanflow.sampling.hooks import StepHook
from wanflow.server.app import create_app
from wanflow.server.schemas import Limits
from wanflow.tasks import TASKS


class SlowBlocks(StepHook):
    """Every DiT block of a run takes at least ``delay`` seconds more (so a test can cancel in the middle of a step)."""

    def __init__(self, delay: float):
        self.delay, self.handles = delay, []

    def before(self, step, model) -> None:
        self.end()
        self.handles = [block.register_forward_hook(self._sleep) for block in model.blocks]

    def _sleep(self, block, args, output) -> None:
        time.sleep(self.delay)

    def end(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


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


def loader(folder: str, delay: float, block_delay: float = 0.0):
    def load():
        pipe = WanPipeline.from_pretrained(folder)
        if block_delay:
            pipe.add_hook(SlowBlocks(block_delay))
        return Slowed(pipe, delay) if delay else pipe

    return load


def _extender(folder: str | None):
    if folder is None:
        return None
    from wanflow.prompts.extend import LocalExtender

    return LocalExtender(folder, max_new_tokens=24).load()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--ckpt", action="append", default=[], help="TASK=FOLDER")
    p.add_argument("--step_delay", type=float, default=0.0)
    p.add_argument("--token")
    p.add_argument("--max_queue", type=int, default=100)
    p.add_argument("--max_attempts", type=int, default=2)
    p.add_argument("--block_delay", type=float, default=0.0)
    p.add_argument("--access_log", type=int, default=0, help="1: uvicorn's access log on (log level info)")
    p.add_argument("--lora_dir")
    p.add_argument("--prompt_extend_model")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)
    pipelines, tasks = {}, {}
    for item in args.ckpt:
        task, folder = item.split("=", 1)
        pipelines[task] = loader(folder, args.step_delay, args.block_delay)
        tasks[task] = checkpoint_task(detect_layout(folder), TASKS[task])  # as `wanflow serve` does for the built-ins
    small = dict(max_side=256, max_pixels=128 * 128, max_frames=9, max_steps=20)
    limits = Limits(**small, max_upload=200_000, max_video_upload=300_000)
    app = create_app(
        pipelines,
        f"{args.data}/jobs.sqlite",
        args.data,
        token=args.token,
        max_queue=args.max_queue,
        limits=limits,
        max_attempts=args.max_attempts,
        event_interval=0.05,
        tasks=tasks,
        lora_dir=args.lora_dir,
        prompt_extender=_extender(args.prompt_extend_model),
    )
    level = "info" if args.access_log else "warning"
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level=level, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
