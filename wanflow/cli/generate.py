"""``wanflow generate``: the reference ``generate.py`` flags (and their hyphenated spellings), plus a few more."""

from __future__ import annotations

import argparse
import logging
import re
import resource
import sys
import time
from pathlib import Path

from wanflow.configs import TASKS, TaskSpec

log = logging.getLogger("wanflow")

EXAMPLE_PROMPT = (
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
)
DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def str2bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def parse_size(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[*xX]\s*(\d+)\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like WIDTH*HEIGHT (e.g. 1280*720), got {value!r}")
    return int(match.group(1)), int(match.group(2))


def nonnegative_int(value: str) -> int:
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def parse_guide(value: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"guide scale must be a number or two numbers 'low,high', got {value!r}"
        ) from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"guide scale takes one value or two ('low,high'), got {value!r}")
    return parts


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """``--frame_num`` also answers to ``--frame-num``."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def add_sampler_arguments(p: argparse.ArgumentParser, solver: str | None) -> None:
    """``--sample_solver/steps/shift/guide_scale``, shared by generate and evaluate; left out, the solver is ``solver``
    (None: not given, so the pipeline's unipc) and the others None (the model's defaults)."""
    _flag(p, "sample_solver", default=solver, choices=["unipc", "dpm++", "euler"], help="solver (default unipc)")
    _flag(p, "sample_steps", type=int, help="denoising steps (default per task)")
    _flag(p, "sample_shift", type=float, help="noise schedule shift (default per task)")
    _flag(
        p,
        "sample_guide_scale",
        type=parse_guide,
        help="guidance scale; two values 'low,high' for the two experts (default per task)",
    )


def sampler_keywords(args: argparse.Namespace) -> dict:
    """The ``--sample_*`` flags that were given, as the pipeline's keywords (the others keep the model's defaults)."""
    given = {
        "steps": args.sample_steps,
        "shift": args.sample_shift,
        "guide_scale": args.sample_guide_scale,
        "solver": args.sample_solver,
    }
    return {k: v for k, v in given.items() if v is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the prompt (or --prompt)")
    _flag(p, "task", default="t2v-A14B", choices=sorted(TASKS), help="which model (default t2v-A14B)")
    _flag(p, "size", type=parse_size, help="WIDTH*HEIGHT; with --image the pixel area to fill (default per task)")
    _flag(p, "frame_num", type=int, help="frames, 4n+1 (default per task: 81, or 121 for ti2v-5B)")
    _flag(p, "ckpt_dir", help="checkpoint folder (official or diffusers layout) or a Hugging Face repo id")
    _flag(p, "offload_model", type=str2bool, help="keep only the active expert on the GPU (default: true)")
    _flag(
        p,
        "offload",
        choices=["resident", "model", "block"],
        help="placement policy: all experts resident, only the active one (model), or blocks streamed (block)",
    )
    _flag(p, "t5_cpu", action="store_true", help="run the text encoder on the CPU")
    _flag(p, "convert_model_dtype", action="store_true", help="DiT parameters in bfloat16 (the GPU default here)")
    _flag(p, "dtype", choices=sorted(DTYPES), help="every component in this dtype (default: as the reference)")
    _flag(p, "fp8", action="store_true", help="DiT block weights stored in float8 e4m3 with per-channel scales")
    _flag(p, "compile", action="store_true", help="torch.compile each DiT block (the first steps pay the compile)")
    _flag(
        p,
        "vae_tile",
        type=nonnegative_int,
        default=0,
        help="VAE decode in exact spatial tiles of N latent pixels, for less memory (default 0: whole frames)",
    )
    _flag(p, "prompt", help="the prompt")
    _flag(p, "negative_prompt", help="the negative prompt (default: the reference's)")
    _flag(p, "image", help="input image (i2v-A14B needs one; with ti2v-5B it selects image-to-video)")
    _flag(p, "base_seed", type=int, default=-1, help="seed; -1 draws one and reports it")
    add_sampler_arguments(p, solver="unipc")
    _flag(p, "save_file", help="output .mp4, .gif, or a folder ending in / for PNG frames")
    _flag(p, "device", help="cuda, cuda:1, cpu ... (default: cuda if available)")
    _flag(p, "ulysses_size", type=int, default=1, help="sequence-parallel ranks (torchrun; default 1)")
    _flag(p, "dit_fsdp", action="store_true", help="shard the DiT experts with FSDP2 (torchrun)")
    _flag(p, "t5_fsdp", action="store_true", help="shard the text encoder with FSDP2 (torchrun)")
    _flag(p, "cfg_parallel", action="store_true", help="conditional and unconditional passes on 2 rank groups")


def default_save_file(task: str, size: tuple[int, int] | None, prompt: str) -> str:
    size_text = "x".join(map(str, size)) if size else "default"
    stem = prompt[:50].replace(" ", "_").replace("/", "_")
    return f"{task}_{size_text}_1_{stem}_{time.strftime('%Y%m%d_%H%M%S')}.mp4"


def run(args: argparse.Namespace) -> int:
    import torch

    from wanflow.io.video import check_writable

    prompt = args.prompt if args.prompt is not None else args.prompt_text
    prompt = EXAMPLE_PROMPT if prompt is None else prompt
    if args.task == "i2v-A14B" and args.image is None:
        raise ValueError("i2v-A14B needs an input image: --image PATH")
    ckpt_dir, spec = checkpoint_and_task(args)
    preflight(args, spec, prompt)
    save_file = args.save_file or default_save_file(args.task, args.size, prompt)
    check_writable(save_file)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    offload = args.offload or (None if args.offload_model is None else ("model" if args.offload_model else "resident"))
    ctx = launch(args)
    try:
        return generate(args, ctx, ckpt_dir, prompt, save_file, dtype, offload)
    finally:
        if ctx.is_distributed:
            from wanflow.runtime.distributed import shutdown

            shutdown()


def generate(args: argparse.Namespace, ctx, ckpt_dir: str, prompt: str, save_file: str, dtype, offload) -> int:
    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.pipelines.progress import Progress, TqdmProgress

    if ctx.is_distributed:
        offload = "resident"  # the reference never offloads in a distributed run
        args.base_seed = ctx.seed
    start = time.perf_counter()
    pipe = WanPipeline.from_pretrained(
        ckpt_dir,
        task=args.task,
        device=args.device or ctx.device,
        dtype=dtype,
        offload=offload,
        t5_cpu=args.t5_cpu,
        fp8=args.fp8,
        compile=args.compile,
        vae_tile=args.vae_tile,
    )
    if ctx.is_distributed:
        from wanflow.runtime.distributed import parallelize_pipeline

        parallelize_pipeline(pipe, ctx, args.ulysses_size, args.dit_fsdp, args.cfg_parallel, args.t5_fsdp)
    load_time = time.perf_counter() - start
    video = pipe(
        prompt,
        negative_prompt=args.negative_prompt,
        image=args.image,
        size=args.size,
        frames=args.frame_num,
        seed=args.base_seed,
        **sampler_keywords(args),
        progress=TqdmProgress() if ctx.is_rank0 else Progress(),
    )
    if not ctx.is_rank0:
        return 0  # only rank 0 writes the file
    if args.base_seed < 0:
        print(f"seed: {video.seed}", file=sys.stderr)
    path = video.save(save_file)
    print(summary(video, load_time, time.perf_counter() - start, path))
    return 0


def launch(args: argparse.Namespace):
    """Join torchrun's process group when there is one; the parallel flags need one."""
    import os

    from wanflow.runtime.distributed import init_from_env

    parallel = args.ulysses_size > 1 or args.dit_fsdp or args.t5_fsdp or args.cfg_parallel
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and parallel:
        raise ValueError(
            "--ulysses_size > 1, --dit_fsdp, --t5_fsdp and --cfg_parallel need several processes: "
            "launch with torchrun --nproc_per_node N -m wanflow generate ..."
        )
    return init_from_env(seed=args.base_seed)


def checkpoint_and_task(args: argparse.Namespace) -> tuple[str, TaskSpec]:
    """The checkpoint to load (the built-in model when no --ckpt_dir is given) and the task's defaults for it."""
    from wanflow.builtin import builtin_checkpoint
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.pipelines.pipeline import task_spec

    spec = TASKS[args.task]
    if args.ckpt_dir is None:
        path = builtin_checkpoint(args.task)
        spec = task_spec(detect_layout(path), spec)
        w, h = spec.size
        print(
            f"using the built-in {args.task} model ({w}x{h}, {spec.frames} frames, {spec.steps} steps); "
            "pass --ckpt_dir for the published weights",
            file=sys.stderr,
        )
        return str(path), spec
    local = Path(args.ckpt_dir).expanduser()
    return args.ckpt_dir, task_spec(detect_layout(local), spec) if local.is_dir() else spec


def preflight(args: argparse.Namespace, spec: TaskSpec, prompt: str) -> None:
    """Check every argument against the task before minutes are spent loading weights."""
    from wanflow.configs import VAE_CONFIGS
    from wanflow.pipelines.request import resolve

    resolve(
        spec,
        VAE_CONFIGS[spec.vae].stride[1],
        2,
        prompt,
        args.negative_prompt,
        args.image,
        args.size,
        args.frame_num,
        args.sample_steps,
        args.sample_shift,
        args.sample_guide_scale,
        args.sample_solver,
        args.base_seed,
    )


def summary(video, load_time: float, total: float, path: Path) -> str:
    t = video.timings
    peak = video.peak_memory
    memory = (
        f"peak GPU memory {peak / 2**30:.2f} GiB"
        if peak is not None
        else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    return (
        f"done in {total:.1f}s (load {load_time:.1f}s, text+conditioning {t['encode']:.1f}s, "
        f"denoise {t['denoise']:.1f}s, decode {t['decode']:.1f}s), {memory}, seed {video.seed}, saved {path}"
    )
