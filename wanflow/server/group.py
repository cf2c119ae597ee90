"""A torchrun group as one worker (``torchrun --nproc_per_node 8 -m wanflow worker ... --ulysses_size 8``).

Rank 0 claims, heartbeats and reports (``worker.Worker`` with ``group=``); after every claim attempt it tells the
other ranks what it got (a job, nothing yet, or stop), and they run the same job with the same seed. At every check
(before each DiT block and after each step) rank 0's verdict (go on, cancelled, shutting down, lease lost) is
broadcast, so every rank leaves the run at the same block and no collective is left waiting.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from wanflow.pipelines.progress import Progress
from wanflow.runtime.distributed import DistContext
from wanflow.sampling.noise import draw_seed
from wanflow.server.jobs import Files, Models
from wanflow.server.worker import RAISES, STOP, run_job

log = logging.getLogger(__name__)


class Group:
    """The group's messages, all from rank 0."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx

    @property
    def rank0(self) -> bool:
        return self.ctx.is_rank0

    def share(self, message: object = None) -> object:
        """Rank 0's ``message`` (a job, None, or STOP) on every rank."""
        box = [message]
        dist.broadcast_object_list(box, src=0, device=self.ctx.device if self.ctx.backend == "nccl" else None)
        return box[0]

    def agree(self, code: int) -> int:
        """Rank 0's check verdict on every rank."""
        value = torch.tensor([code], dtype=torch.int64, device=self.ctx.device)
        dist.broadcast(value, src=0)
        return int(value.item())

    @staticmethod
    def seeded(job: dict) -> dict:
        """The job with its seed drawn once (on rank 0) when it asks for a random one: every rank must use it."""
        params = job["params"]
        if params.get("seed", -1) >= 0:
            return job
        return dict(job, params=dict(params, seed=draw_seed(-1)))


def follow(group: Group, models: Models, files: Files, loras=None) -> None:
    """The loop of the ranks other than 0: run each job rank 0 shares, until it says stop."""
    while (job := group.share()) != STOP:
        if job is None:
            continue

        def check() -> None:
            code = group.agree(0)
            if code in RAISES:
                raise RAISES[code]

        try:
            run_job(job, models, files, loras, Progress(), check, previews=False)
        except tuple(RAISES.values()):
            pass
        except Exception:  # rank 0 reports the job; this rank's own error goes to its log
            log.exception("rank %d: job %s failed", group.ctx.rank, job["id"])
