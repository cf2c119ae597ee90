"""Classifier-free-guidance parallelism: the conditional pass on one rank (group), the unconditional on the other.

``CfgParallel(group)`` is a step hook of the denoising loop that replaces its velocity computation. Rank 0 of the
two-rank group runs the prompt, rank 1 the negative prompt; one all-gather per step brings both velocities to both
ranks, which combine them with the same arithmetic as the single-process loop. With a 2-D ("cfg", "ulysses") mesh,
pass ``mesh["cfg"]``: each cfg half then runs its pass sequence-parallel over its row.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule

from wanflow.runtime.distributed import as_group
from wanflow.sampling.guidance import CFG, Guidance
from wanflow.sampling.hooks import Step, StepHook, Velocity


class CfgParallel(StepHook):
    """The guided velocity with its two passes on the two ranks of ``group``."""

    def __init__(self, group: dist.ProcessGroup | DeviceMesh | None = None):
        self.group = as_group(group)
        size = dist.get_world_size(self.group)
        if size != 2:
            raise ValueError(f"CFG parallelism splits the two guidance passes over exactly 2 ranks, got {size}")
        self.rank = dist.get_rank(self.group)

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        skip = step.guidance.skipped_layers(step.index, step.total, step.sigma)
        return lambda model, latents, t, cond, scale: self.velocity(model, latents, t, cond, scale, step.guidance, skip)

    def velocity(
        self,
        model: nn.Module,
        latents: torch.Tensor,
        t,
        cond,
        scale: float,
        guidance: Guidance = CFG,
        skip: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    ) -> torch.Tensor:
        """The two passes combined by ``guidance`` (``uncond + scale * (cond - uncond)``); ``cond`` is the loop's
        ``Conditioning``. Skip layer guidance's third pass (``skip[0]`` blocks left out) runs on both ranks (the same
        prediction: nothing to exchange, and FSDP-sharded blocks see the same forwards on every rank); its ``uncond``
        mode's blocks (``skip[1]``) are left out of rank 1's pass, which FSDP cannot follow (refused)."""
        third, uncond_skip = skip
        if uncond_skip and any(isinstance(m, FSDPModule) for m in model.modules()):
            raise ValueError(
                "slg_mode uncond leaves blocks out of one rank's pass: not with --cfg_parallel and a DiT sharded by "
                "--dit_fsdp (every rank must run every sharded block); use slg_mode pass, or one of the two"
            )
        positive = cond.positive()
        v_skip = model(latents, t, positive, y=cond.y, skip_blocks=third) if third else None
        if scale == 1.0:  # guidance off: both ranks run the conditional pass, nothing to exchange
            return guidance.combine(model(latents, t, positive, y=cond.y), None, scale, v_skip)
        context, blocks = (positive, ()) if self.rank == 0 else (cond.context_null, uncond_skip)
        mine = model(latents, t, context, y=cond.y, skip_blocks=blocks).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.group)
        v_cond, v_uncond = both
        return guidance.combine(v_cond, v_uncond, scale, v_skip)
