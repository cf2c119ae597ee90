"""The launch flags of a distributed run, applied to a loaded pipeline through its transform methods."""

from __future__ import annotations

from torch import nn

from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.cfg_parallel import CfgParallel
from wanflow.runtime.distributed import DistContext, check_layout
from wanflow.runtime.fsdp import shard_dit, shard_text_encoder
from wanflow.runtime.sequence_parallel import parallelize_sequence


def parallelize_pipeline(
    pipe: WanPipeline,
    ctx: DistContext,
    ulysses_size: int = 1,
    dit_fsdp: bool = False,
    cfg_parallel: bool = False,
    t5_fsdp: bool = False,
    vae_parallel: bool = True,
) -> WanPipeline:
    """CFG parallelism over 2 groups (``--cfg_parallel``), Ulysses over ``ulysses_size`` ranks in each, FSDP2 of each
    expert (``--dit_fsdp``) and of umT5 (``--t5_fsdp``) over the whole world, and the VAE decode's spatial tiles over
    the whole world (``vae_parallel``); in place. Every rank runs the same call with the same seed and gets the same
    video; only rank 0 should save it (``runtime.distributed.on_rank0``)."""
    cfg_size = 2 if cfg_parallel else 1
    split = ulysses_size > 1 or cfg_parallel  # FSDP alone may run on any world size
    if split:
        check_layout(ctx.world_size, ulysses_size=ulysses_size, cfg_size=cfg_size)
    if (dit_fsdp or t5_fsdp) and pipe.offload != "resident":
        raise ValueError("FSDP keeps the shards on the device; load the pipeline with offload='resident'")
    if ctx.world_size == 1:
        return pipe
    mesh = ctx.mesh(cfg_size=cfg_size, ulysses_size=ulysses_size) if split else None

    def transform(name: str, model: nn.Module) -> nn.Module:
        if ulysses_size > 1:
            model = parallelize_sequence(model, mesh["ulysses"])
        return shard_dit(model, ctx.flat_mesh()) if dit_fsdp else model

    pipe.map_experts(transform)
    if cfg_parallel:
        pipe.add_hook(CfgParallel(mesh["cfg"]))
    if t5_fsdp:
        shard_text_encoder(pipe.text_encoder, ctx.flat_mesh())
    if vae_parallel:
        pipe.decode_over(ctx.flat_mesh())
    return pipe
