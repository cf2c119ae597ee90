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
        skip = step.guidance.skipped_layers(step.index, step.total)
        return lambda model, latents, t, cond, scale: self.velocity(model, latents, t, cond, scale, step.guidance, skip)

    def velocity(
        self,
        model: nn.Module,
        latents: torch.Tensor,
        t,
        cond,
        scale: float,
        guidance: Guidance = CFG,
        skip: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """The two passes combined by ``guidance`` (``uncond + scale * (cond - uncond)``); ``cond`` is the loop's
        ``Conditioning``. Skip layer guidance's third pass (``skip`` blocks left out) runs on rank 0, which sends it
        to rank 1."""
        v_skip = self._skip_pass(model, latents, t, cond, skip) if skip else None
        if scale == 1.0:  # guidance off: both ranks run the conditional pass, nothing to exchange
            return guidance.combine(model(latents, t, cond.positive(), y=cond.y), None, scale, v_skip)
        context = cond.positive() if self.rank == 0 else cond.context_null
        mine = model(latents, t, context, y=cond.y).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.group)
        v_cond, v_uncond = both
        return guidance.combine(v_cond, v_uncond, scale, v_skip)

    def _skip_pass(self, model: nn.Module, latents: torch.Tensor, t, cond, skip: tuple[int, ...]) -> torch.Tensor:
        if self.rank == 0:
            out = model(latents, t, cond.positive(), y=cond.y, skip_blocks=skip).contiguous()
        else:
            out = torch.empty(latents.shape[0], model.cfg.out_dim, *latents.shape[2:], device=latents.device)
        dist.broadcast(out, src=dist.get_global_rank(self.group, 0), group=self.group)
        return out
