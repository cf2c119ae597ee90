"""One rank of the distributed tests: ``python -m tests.runtime.dist_worker OUT_DIR CHECK [CHECK ...]``.

Launched by ``test_distributed.py`` with the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
Each check runs the parallel computation and the single-process one on the same tiny random weights and records the
max abs difference (or the error message of an expected ValueError) in ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, TINY_TI2V, random_dit
from tests.tiny.t5 import TINY_T5
from tests.tiny.vae import TINY_VAE21, random_vae
from wanflow.models.text_encoder import build_umt5
from wanflow.pipelines.core import Conditioning, Sampler, denoise
from wanflow.pipelines.parallel import parallelize_pipeline
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.cfg_parallel import CfgParallel
from wanflow.runtime.distributed import (
    DistContext,
    broadcast_seed,
    check_layout,
    init_from_env,
    on_rank0,
    shutdown,
)
from wanflow.runtime.fsdp import shard_dit, shard_text_encoder
from wanflow.runtime.ring_attention import ulysses_ring_attention
from wanflow.runtime.sequence_parallel import UlyssesSequence, parallelize_sequence
from wanflow.runtime.vae_parallel import decode_parallel, split_tile
from wanflow.runtime.vae_tiling import plan_tiles
from wanflow.sampling.guidance import Guidance, SkipLayers
from wanflow.sampling.noise import draw_seed
from wanflow.sampling.solvers import get_schedule, get_solver

STEPS = 3


def _case(task: str) -> tuple[dict, torch.Tensor, Conditioning, float | None, tuple[float, float] | float]:
    """Two experts (T2V, 45 tokens: padded for 2 and 4 ranks) or one with an image in frame 0 (TI2V, 27 tokens)."""
    gen = torch.Generator().manual_seed(1)
    if task == "t2v":
        noise = torch.randn(1, 16, 3, 6, 10, generator=gen)
        ctx = torch.randn(2, 7, TINY_T2V.text_dim, generator=gen)
        schedule = get_schedule("unipc", STEPS, 5.0)
        return {"high": 1, "low": 2}, noise, Conditioning(ctx[:1], ctx[1:]), float(schedule.timesteps[1]), (3.0, 4.5)
    noise = torch.randn(1, 48, 3, 6, 6, generator=gen)
    ctx = torch.randn(2, 7, TINY_TI2V.text_dim, generator=gen)
    frame0 = torch.randn(1, 48, 1, 6, 6, generator=gen)
    return {"dense": 3}, noise, Conditioning(ctx[:1], ctx[1:], frame0=frame0), None, 5.0


def _sample(
    task: str, ctx: DistContext, heads: int, sp: bool = False, cfg: bool = False, fsdp: bool = False, slg: str = ""
):
    seeds, noise, cond, boundary_t, guide = _case(task)
    dit_cfg = (TINY_T2V if task == "t2v" else TINY_TI2V).replace(dim=12 * heads, num_heads=heads)
    experts = {}
    if ctx.is_distributed:
        mesh = ctx.mesh(cfg_size=2 if cfg else 1)
        ulysses = mesh["ulysses"].size()
    for name, seed in seeds.items():
        model = random_dit(dit_cfg, seed)
        if sp:
            model = parallelize_sequence(model, mesh["ulysses"])
            # The blocks must see this rank's tokens only: ceil(L / P) of them.
            tokens = math.prod(n // p for n, p in zip(noise.shape[2:], dit_cfg.patch_size, strict=True))
            model.blocks[0].register_forward_pre_hook(partial(_expect_tokens, -(-tokens // ulysses)))
        if fsdp:
            model = shard_dit(model, ctx.flat_mesh())
        experts[name] = model
    hooks = [CfgParallel(mesh["cfg"])] if cfg else []
    # (ti2v: CFG parallelism combines by the run's rule, skip layer guidance's third pass runs on cfg rank 0, and the
    # lcm solver's fresh noise is each rank's own draw of the same seed)
    # t2v: SLG's uncond mode (rank 1 of a CFG pair leaves the blocks out), or under FSDP its third pass (every rank)
    mode = slg or ("pass" if fsdp else "uncond")
    t2v_slg = Guidance(slg=SkipLayers((1,), 2.0, 0.0, 1.0, mode))
    guidance = Guidance("cfg_zero_star", 1, SkipLayers((1,), 2.0, 0.0, 1.0)) if task == "ti2v" else t2v_slg
    name = "lcm" if task == "ti2v" else "unipc"
    schedule, solver = get_schedule(name, STEPS, 5.0), get_solver(name)
    sampler = Sampler(schedule, solver, boundary_t, guide, batch_cfg=False, guidance=guidance, seed=7)
    with torch.no_grad():
        return denoise(experts, noise, cond, sampler, hooks)


def _expect_tokens(count: int, module, args) -> None:
    if args[0].shape[1] != count:
        raise AssertionError(f"a block saw {args[0].shape[1]} tokens, expected the {count} of one shard")


def check_sample(
    ctx: DistContext, task: str, sp: bool = False, cfg: bool = False, fsdp: bool = False, heads: int | None = None
) -> float:
    """Max |parallel - serial| of the final latents of a whole denoising run.

    Given ``heads``, which need not split over the sequence-parallel ranks (Ulysses x ring attention), the difference
    is relative to the largest latent: the ring's blockwise softmax rounds differently from one whole-sequence kernel
    (~1e-7), and three guided steps grow that to ~1e-5 on latents of ~10 (~1e-6 relative)."""
    ulysses = ctx.world_size // (2 if cfg else 1)
    relative = heads is not None
    if heads is None:
        heads = 4 if sp and ulysses == 4 else 2  # the tiny DiT has 2 heads; pure Ulysses over 4 ranks needs 4
    one = DistContext(0, 1, 0, ctx.device, None)
    serial = _sample(task, one, heads, slg="pass" if fsdp else "uncond")  # no collectives: the plain loop
    diff = (_sample(task, ctx, heads, sp, cfg, fsdp) - serial).abs().max().item()
    return diff / serial.abs().max().item() if relative else diff


def check_t5_fsdp(ctx: DistContext) -> float:
    def encoder():
        torch.manual_seed(4)  # random init, the same on every rank
        return build_umt5(TINY_T5)

    ids = torch.randint(1, TINY_T5.vocab_size, (2, TINY_T5.text_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        serial = encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        sharded = shard_text_encoder(encoder(), ctx.flat_mesh())(input_ids=ids, attention_mask=mask).last_hidden_state
    return (sharded - serial).abs().max().item()


def check_pipeline(ctx: DistContext, task: str, out: Path) -> float:
    """WanPipeline frames with Ulysses + FSDP of the experts vs the same pipeline in one process."""
    pipe = WanPipeline.from_pretrained(write_official_checkpoint(out / f"{task}-rank{ctx.rank}", task))
    kw = dict(size=(48, 64), frames=5, steps=3, seed=ctx.seed)
    if task == "ti2v-5B":
        kw["image"] = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    serial = pipe("a red circle", **kw).frames
    parallelize_pipeline(pipe, ctx, ulysses_size=ctx.world_size, dit_fsdp=True)
    assert all(isinstance(m.sequence, UlyssesSequence) for m in pipe.experts.values())
    return (pipe("a red circle", **kw).frames - serial).abs().max().item()


def check_interrupt(ctx: DistContext, out: Path) -> float:
    """diffusers' interrupt set by rank 0's callback only, after step 1 of 3: every rank stops there (no rank left
    waiting in a collective) with the latents of one process interrupted there."""
    pipe = WanPipeline.from_pretrained(write_official_checkpoint(out / f"interrupt-rank{ctx.rank}", "t2v-A14B"))
    kw = dict(size=(48, 64), frames=5, num_inference_steps=3, seed=ctx.seed, output_type="latent")
    steps = []

    def rank0_stops(p, i, t, kwargs):
        steps.append(i)
        p._interrupt = p._interrupt or (i == 1 and ctx.rank == 0)
        return kwargs

    serial = pipe("a red circle", callback_on_step_end=rank0_stops, **kw).frames  # (each rank whole; they agree)
    assert steps == [0, 1], steps
    parallelize_pipeline(pipe, ctx, ulysses_size=ctx.world_size)
    steps.clear()
    out_latents = pipe("a red circle", callback_on_step_end=rank0_stops, **kw).frames
    assert steps == [0, 1] and pipe.interrupt, (steps, pipe.interrupt)
    return (out_latents - serial).abs().max().item()


def check_vae(ctx: DistContext) -> float:
    vae = random_vae(TINY_VAE21, 5)
    latents = torch.randn(3, 16, 2, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (decode_parallel(vae, latents, ctx.flat_mesh()) - vae.decode(latents)).abs().max().item()


def check_vae_split(ctx: DistContext, tile: tuple[int, int] | None) -> dict[str, float | int]:
    """One clip's tiles over the ranks: the difference to one process, and how many tile-frames this rank decoded
    (``Decoder.tail`` calls) out of how many in all."""
    vae = random_vae(TINY_VAE21, 5)
    latents = torch.randn(1, 16, 2, 6, 10, generator=torch.Generator().manual_seed(3))
    frames, calls = [], []
    vae.decoder.head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        serial = vae.decode(latents)
        calls.clear()
        video = decode_parallel(vae, latents, ctx.flat_mesh(), tile, on_frame=frames.append)
    tiles = len(plan_tiles(6, 10, tile or split_tile(6, 10, ctx.world_size, 13), 13))
    return {
        "diff": (video - serial).abs().max().item(),
        "tail_calls": len(calls),
        "all_calls": tiles * latents.shape[2],
        "progress": frames,
    }


def expect_error(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return f"ValueError: {err}"
    raise AssertionError("expected a ValueError")


def check_ring(ctx: DistContext) -> float:
    """Max |sharded - full| of ``ulysses_ring_attention`` over head counts that split over the ranks and that do not
    (Ulysses x ring, pure ring), on a sequence padded up to a multiple of the ranks with random padding keys."""
    group, p, rank = ctx.flat_mesh().get_group(), ctx.world_size, ctx.rank
    seq_len = 7 * p - 3
    s = -(-seq_len // p)  # tokens per rank, the last rank's end is padding
    worst = 0.0
    for heads in (1, 2, 3, 4, 6):
        q, k, v = torch.randn(3, 2, s * p, heads, 8, generator=torch.Generator().manual_seed(heads))
        full = F.scaled_dot_product_attention(*(a[:, :seq_len].transpose(1, 2) for a in (q, k, v))).transpose(1, 2)
        mine = slice(rank * s, (rank + 1) * s)
        out = ulysses_ring_attention(q[:, mine], k[:, mine], v[:, mine], seq_len, group)
        real = max(0, min(s, seq_len - rank * s))
        worst = max(worst, (out[:, :real] - full[:, rank * s : rank * s + real]).abs().max().item())
    return worst


def check_errors(ctx: DistContext) -> dict[str, str]:
    mesh = ctx.flat_mesh()
    model = parallelize_sequence(random_dit(TINY_T2V), mesh)
    one_token = torch.zeros(1, 16, 1, 2, 2)
    return {
        "fsdp_first": expect_error(lambda: parallelize_sequence(shard_dit(random_dit(TINY_T2V), mesh), mesh)),
        "tokens": expect_error(lambda: model(one_token, torch.tensor([500]), torch.zeros(1, 3, TINY_T2V.text_dim))),
        "ulysses_size": expect_error(lambda: ctx.mesh(ulysses_size=2 * ctx.world_size)),
        "layout": expect_error(lambda: check_layout(ctx.world_size, ulysses_size=3)),
    }


CHECKS = {
    "sp_t2v": lambda ctx: check_sample(ctx, "t2v", sp=True),
    "sp_ti2v": lambda ctx: check_sample(ctx, "ti2v", sp=True),
    "cfg_t2v": lambda ctx: check_sample(ctx, "t2v", cfg=True),
    "cfg_ti2v": lambda ctx: check_sample(ctx, "ti2v", cfg=True),
    "fsdp_t2v": lambda ctx: check_sample(ctx, "t2v", fsdp=True),
    "fsdp_sp_ti2v": lambda ctx: check_sample(ctx, "ti2v", sp=True, fsdp=True),
    "cfg_sp_fsdp_t2v": lambda ctx: check_sample(ctx, "t2v", sp=True, cfg=True, fsdp=True),
    "cfg_sp_ti2v": lambda ctx: check_sample(ctx, "ti2v", sp=True, cfg=True),
    "ring": check_ring,
    "sp_t2v_heads2": lambda ctx: check_sample(ctx, "t2v", sp=True, heads=2),  # 4 ranks: Ulysses 2 x ring 2
    "sp_t2v_heads3": lambda ctx: check_sample(ctx, "t2v", sp=True, heads=3),  # pure ring
    "sp_ti2v_heads3": lambda ctx: check_sample(ctx, "ti2v", sp=True, heads=3),  # pure ring, per-token timesteps
    "t5_fsdp": check_t5_fsdp,
    "pipeline_t2v": lambda ctx, out: check_pipeline(ctx, "t2v-A14B", out),
    "pipeline_ti2v": lambda ctx, out: check_pipeline(ctx, "ti2v-5B", out),
    "pipeline_interrupt": check_interrupt,
    "vae": check_vae,
    "vae_split": lambda ctx: check_vae_split(ctx, (4, 3)),  # 8 tiles, neither size divides the frame
    "vae_split_auto": lambda ctx: check_vae_split(ctx, None),  # about one tile per rank
    "errors": check_errors,
}


def main(out: Path, names: list[str]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ctx = init_from_env(timeout_s=60, seed=100 + int(os.environ["RANK"]))  # every rank must end up with 100
    results: dict[str, object] = {"seed": ctx.seed, "drawn_seed": broadcast_seed(draw_seed(-1))}
    results["top_seed"] = broadcast_seed(2**64 - 1 - int(os.environ["RANK"]))  # (past int64: rank 0's, as its bits)
    for name in names:
        check = CHECKS[name]
        results[name] = check(ctx, out) if name.startswith("pipeline") else check(ctx)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(results))
    on_rank0((out / f"written_by_rank{ctx.rank}").write_text, "only rank 0 writes files")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
