"""``wanflow generate``: the reference ``generate.py`` flags (and their hyphenated spellings), plus a few more.

The flags map onto the pipeline's two option objects, ``GenerateOptions`` (what to make) and ``RuntimeOptions`` (how
to run the models), through the tables below; their choices come from the registries (tasks, solvers, memory
policies). Every value is checked by the pipeline's own ``resolve`` before any weights are loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from wanflow.cli.lora import add_lora_arguments, check_call_strengths, cli_loras, load_cli_loras
from wanflow.cli.parsers import add_flag, parse_guide, parse_size, positive_int, str2bool
from wanflow.cli.prompt_extend import EXTEND_FLAGS, add_prompt_extend_arguments, cli_extender
from wanflow.cli.runtime_flags import add_runtime_arguments, runtime_keywords
from wanflow.cli.single_files import add_file_arguments, files_layout_from_args, given_files
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.pipelines.runtime_options import RuntimeOptions
from wanflow.sampling.comfy_schedules import SCHEDULERS
from wanflow.sampling.noise import NOISE_DEVICES
from wanflow.sampling.solvers import SOLVERS
from wanflow.tasks import TASKS, Task, get_task

log = logging.getLogger("wanflow")

EXAMPLE_PROMPT = (
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."
)

# The flags of the request, by ``GenerateOptions`` field: the reference's names outside, one name inside.
SAMPLER_FLAGS = {
    "sample_steps": "steps",
    "sample_shift": "shift",
    "sample_guide_scale": "guide_scale",
    "scheduler": "scheduler",
    "sigmas": "sigmas",
}
OPTION_FLAGS = {
    "negative_prompt": "negative_prompt",
    "image": "image",
    "last_image": "last_image",
    "video": "video",
    "strength": "strength",
    "extend": "extend",
    "window_frames": "window_frames",
    "window_overlap": "window_overlap",
    "window_anchor": "window_anchor",
    "size": "size",
    "frame_num": "frames",
    "sample_solver": "solver",
    **SAMPLER_FLAGS,
    "base_seed": "seed",
    "noise_device": "noise_device",
    "low_noise_seed": "low_noise_seed",
    "low_noise_shift": "low_noise_shift",
    "image_fit": "image_fit",
    "image_scale": "image_scale",
    "preset": "preset",
    "float_timesteps": "float_timesteps",
    **EXTEND_FLAGS,
    "cache": "cache",
    "switch_step": "switch_step",
    **{name: name for name in ("sampler_calls", "call_guide_scale", "call_seeds")},
    "guidance": "guidance",
    **{name: name for name in ("slg_layers", "slg_scale", "slg_start", "slg_stop", "slg_mode", "slg_percent")},
    **{name: name for name in ("nag_scale", "nag_tau", "nag_alpha", "nag_negative_prompt")},
    "riflex": "riflex",
    "enhance_a_video": "enhance_a_video",
}


def add_sampler_arguments(p: argparse.ArgumentParser, solver: str | None) -> None:
    """``--sample_solver/steps/shift/guide_scale``, shared by generate and evaluate; left out, the solver is ``solver``
    (None: not given, so the pipeline's unipc) and the others None (the model's defaults)."""
    add_flag(p, "sample_solver", default=solver, choices=sorted(SOLVERS), help="solver (default unipc)")
    add_flag(p, "sample_steps", type=int, help="denoising steps (default per task)")
    add_flag(p, "sample_shift", type=float, help="noise schedule shift (default per task)")
    add_flag(
        p,
        "sample_guide_scale",
        type=parse_guide,
        help="guidance scale; two values 'low,high' for the two experts (default per task)",
    )
    add_flag(
        p,
        "scheduler",
        choices=sorted(SCHEDULERS),
        help="the steps as ComfyUI's scheduler of this name makes them at --sample_shift, the DiT fed float timesteps "
        "(default: the solver's reference grid)",
    )
    add_flag(
        p,
        "sigmas",
        metavar="S0,S1,...",
        help="the steps' noise levels as given, from at most 1 down to 0 (appended if left out), no shift: e.g. "
        "1,0.9375,0.8333,0.625",
    )


def sampler_keywords(args: argparse.Namespace) -> dict:
    """The ``--sample_*`` flags that were given, as ``GenerateOptions`` keywords (the others keep the model's
    defaults)."""
    flags = {**SAMPLER_FLAGS, "sample_solver": "solver"}
    return {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}


def add_nag_arguments(p: argparse.ArgumentParser) -> None:
    """Normalized attention guidance (``runtime.nag``): the negative prompt at guidance 1 (few-step LoRAs)."""
    add_flag(
        p,
        "nag_scale",
        type=float,
        help="NAG: the negative prompt inside the cross-attention, also at guidance 1 (Lightning LoRAs); above 1 "
        "turns it on (e.g. 4)",
    )
    add_flag(p, "nag_tau", type=float, help="NAG's cap on the attention-norm ratio (default 2.5)")
    add_flag(p, "nag_alpha", type=float, help="NAG's blend of guided and plain attention, 0..1 (default 0.25)")
    add_flag(p, "nag_negative_prompt", help="what NAG pushes away from (default: the negative prompt)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the prompt (or --prompt)")
    add_flag(p, "task", default="t2v-A14B", choices=sorted(TASKS), help="which model (default t2v-A14B)")
    add_flag(p, "size", type=parse_size, help="WIDTH*HEIGHT; with --image the pixel area to fill (default per task)")
    add_flag(p, "frame_num", type=int, help="frames, 4n+1 (default per task: 81, or 121 for ti2v-5B)")
    add_flag(p, "ckpt_dir", help="checkpoint folder (official, diffusers, or single files) or a Hugging Face repo id")
    add_file_arguments(p)
    add_flag(p, "offload_model", type=str2bool, help="keep only the active expert on the GPU (default: true)")
    add_runtime_arguments(p)
    add_flag(p, "prompt", help="the prompt")
    add_flag(p, "negative_prompt", help='the negative prompt (default: the task\'s); --negative_prompt "" for none')
    add_flag(
        p,
        "image",
        help="input image, a path or an http(s) URL (i2v-A14B needs one; with ti2v-5B it selects image-to-video)",
    )
    add_flag(
        p, "last_image", help="the last frame beside --image's first (first-last frame; i2v-A14B), same aspect ratio"
    )
    add_flag(
        p,
        "video",
        help="video to video: start from this video (a file, or a folder of PNG frames) noised part way, its size "
        "and frames unless --size/--frame_num say others",
    )
    add_flag(p, "strength", type=float, help="with --video: the share of the steps that run, (0, 1] (default 0.8)")
    add_flag(
        p,
        "extend",
        help="continue this video (a file, or a folder of PNG frames): --frame_num is then the whole length (default: "
        "one window more), made window after window as a longer video",
    )
    add_flag(p, "window_frames", type=int, help="frames per window of a longer video (default: 81, or 121 for ti2v-5B)")
    add_flag(p, "window_overlap", type=int, help="frames each window takes from the one before, a multiple of 4 (16)")
    add_flag(p, "window_anchor", type=float, help="0..1: grade each window's colours towards the first's (default 0)")
    add_flag(p, "prompt_file", help="one prompt per line, one per window of a longer video (instead of 'a | b | c')")
    add_flag(p, "base_seed", type=int, default=-1, help="seed; -1 draws one and reports it")
    add_sampler_arguments(p, solver=None)  # None: the preset's solver, else unipc
    add_flag(
        p,
        "switch_step",
        type=int,
        metavar="K",
        help="A14B: the high-noise expert runs the first K steps, the low-noise one the rest (as ComfyUI's two "
        "KSamplerAdvanced nodes); default: the switch at the task's boundary timestep",
    )
    add_flag(
        p,
        "sampler_calls",
        metavar="K1,K2,...",
        help="run as ComfyUI's chain of KSamplerAdvanced calls, the ones after the first starting at these steps "
        "(on A14B --switch_step is one): each starts its solver afresh, with its own guidance (--call_guide_scale), "
        "step noise (--call_seeds) and LoRA strengths (--lora_high PATH:S1,S2); e.g. the three-sampler recipe: "
        "--sample_steps 8 --switch_step 4 --sampler_calls 2,4 --call_guide_scale 3.5,1,1 --lora_high L:0,1",
    )
    add_flag(p, "call_guide_scale", metavar="G1,G2,...", help="each sampler call's guidance scale, first first")
    add_flag(
        p,
        "call_seeds",
        metavar="S2,S3,...",
        help="the seeds of the calls after the first, for the solvers that draw step noise (ComfyUI's noise_seed of "
        "each KSamplerAdvanced; default: each call draws from --base_seed)",
    )
    add_flag(
        p,
        "guidance",
        metavar="cfg|cfg_zero_star[:K]",
        help="how the two passes combine: cfg (default), or CFG-Zero* (its optimised scale, and K first steps that "
        "move nothing; default 1)",
    )
    add_flag(p, "slg_layers", metavar="I,J", help="skip layer guidance: a third pass without these DiT blocks (e.g. 9)")
    add_flag(p, "slg_scale", type=float, help="skip layer guidance's scale (default 2.8)")
    add_flag(p, "slg_start", type=float, help="SLG runs on the steps after this fraction of them (default 0.01)")
    add_flag(p, "slg_stop", type=float, help="... and before this fraction (default 0.2)")
    add_flag(
        p,
        "slg_percent",
        metavar="START,END",
        help="SLG runs where the sigma lies between ComfyUI's percent_to_sigma of START and END (its skip layer "
        "guidance nodes' start and end percent), in place of --slg_start/--slg_stop",
    )
    add_flag(
        p,
        "slg_mode",
        choices=["pass", "uncond"],
        help="pass: a third pass (default); uncond: the unconditional pass leaves the blocks out (ComfyUI's Simple)",
    )
    add_nag_arguments(p)
    add_flag(
        p,
        "riflex",
        type=int,
        metavar="K",
        help="RIFLEx for videos longer than the model's 81 frames: the DiT's K-th frame frequency lowered so the "
        "motion does not repeat (6: KJNodes' Apply RifleXRoPE WanVideo default; 0: off)",
    )
    add_flag(
        p,
        "enhance_a_video",
        type=float,
        metavar="W",
        help="Enhance-A-Video: each block's self-attention output scaled up by how much its frames attend to each "
        "other, W added to the frame count (2: KJNodes' WanVideo Enhance A Video default; 0: off)",
    )
    add_flag(p, "save_file", help="output .mp4, .gif, or a folder ending in / for PNG frames")
    add_flag(
        p,
        "noise_device",
        choices=NOISE_DEVICES,
        help="where the initial noise is drawn: the run's device (default, the reference's) or the CPU (ComfyUI's: "
        "a ComfyUI workflow's seed then gives its noise on any device)",
    )
    add_flag(
        p,
        "low_noise_seed",
        type=int,
        help="lcm: the low-noise expert's steps draw their fresh noise from this seed (ComfyUI's second "
        "KSamplerAdvanced's noise_seed; default: they go on drawing from the run's)",
    )
    add_flag(
        p,
        "image_fit",
        choices=["area", "crop"],
        help="how an input image meets --size: area (default, the reference's: its aspect within the size's area) or "
        "crop (ComfyUI's Wan image nodes': the size itself, the image's centre cropped and resized bilinear)",
    )
    add_flag(
        p,
        "image_scale",
        metavar="METHOD:W*H[:center]",
        help="with --image_fit crop: ComfyUI's ImageScale node on the input images first (METHOD nearest-exact, "
        "bilinear, area, bicubic or lanczos; a side 0 keeps the aspect; center crops to W*H's aspect first); or "
        "METHOD:W*H:MODE[:POSITION][:DIVISIBLE_BY][:PAD_COLOR], KJNodes' ImageResizeKJv2 (MODE stretch, resize, "
        "crop, total_pixels, pad, pad_edge, pad_edge_pixel or pillarbox_blur; POSITION of the crop or the padding: "
        "center, top, bottom, left, right; the sides cut to multiples of DIVISIBLE_BY, 2 if left out; PAD_COLOR as "
        "the node takes it, '0, 0, 0' if left out)",
    )
    add_flag(
        p,
        "low_noise_shift",
        type=float,
        help="the low-noise expert's steps from --switch_step on laid out at this shift, as ComfyUI's second "
        "KSamplerAdvanced lays them on its own model's shift (needs --scheduler; default: --sample_shift's steps)",
    )
    add_flag(p, "fps", type=positive_int, help="frames per second of the saved video (default: the task's, 16 or 24)")
    add_flag(p, "ulysses_size", type=int, default=1, help="sequence-parallel ranks (torchrun; default 1)")
    add_flag(p, "dit_fsdp", action="store_true", help="shard the DiT experts with FSDP2 (torchrun)")
    add_flag(p, "t5_fsdp", action="store_true", help="shard the text encoder with FSDP2 (torchrun)")
    add_flag(p, "cfg_parallel", action="store_true", help="conditional and unconditional passes on 2 rank groups")
    add_lora_arguments(p)
    add_prompt_extend_arguments(p, add_flag)
    add_flag(
        p,
        "cache",
        metavar="magcache[:T]|easycache[:T[:START:END]]",
        help="skip DiT forwards on steps that barely change: magcache with the checkpoint's calibration (see "
        "calibrate-cache), or easycache, ComfyUI's EasyCache node (no calibration)",
    )
    add_flag(p, "preview", metavar="FILE.png", help="a PNG of where sampling is heading, rewritten every few steps")
    add_flag(
        p,
        "workflow",
        metavar="FILE.json",
        help="run a ComfyUI Wan 2.2 workflow (the editor's file, its API export, or a PNG/MP4 ComfyUI saved): its "
        "files, prompts, size and sampling as these flags, which the flags given here override",
    )
    add_flag(p, "comfy_dir", metavar="DIR", help="ComfyUI's folder: where --workflow's models and images are")


def with_workflow(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the settings of ``--workflow`` where the command line left a flag at its default (a LoRA flag:
    the workflow's LoRAs, then the command line's; ``--ckpt_dir``: its models, not the workflow's files)."""
    from wanflow.cli.workflow import workflow_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    workflow = parser.parse_args(workflow_arguments(args.workflow, args.comfy_dir, models=args.ckpt_dir is None))
    merged = vars(args).copy()
    for name, value in vars(workflow).items():
        default = parser.get_default(name)
        if isinstance(value, list) and value != default:
            merged[name] = value + (merged.get(name) or [])
        elif merged.get(name) == default and not (name == "prompt" and (args.prompt_text or args.prompt_file)):
            merged[name] = value
    return argparse.Namespace(**merged)


def generate_options(args: argparse.Namespace) -> GenerateOptions:
    prompt = args.prompt if args.prompt is not None else args.prompt_text
    if args.prompt_file is not None:
        if prompt is not None:
            raise ValueError("give the prompt or --prompt_file, not both")
        prompt = window_prompts(args.prompt_file)
    given = {field: getattr(args, flag) for flag, field in OPTION_FLAGS.items() if getattr(args, flag) is not None}
    return GenerateOptions(EXAMPLE_PROMPT if prompt is None else prompt, **given)


def window_prompts(path: str) -> list[str]:
    """The prompts of a prompt file: one per non-empty line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the prompt file {path}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"the prompt file {path} holds no prompt")
    return prompts


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    keywords = runtime_keywords(args)
    if keywords["offload"] is None and args.offload_model is not None:
        keywords["offload"] = "model" if args.offload_model else "resident"
    return RuntimeOptions(**keywords)


def default_save_file(task: str, size: tuple[int, int] | None, prompt: str | list[str]) -> str:
    size_text = "x".join(map(str, size)) if size else "default"
    prompt = prompt if isinstance(prompt, str) else prompt[0]
    stem = prompt[:50].replace(" ", "_").replace("/", "_")
    return f"{task}_{size_text}_1_{stem}_{time.strftime('%Y%m%d_%H%M%S')}.mp4"


def run(args: argparse.Namespace) -> int:
    from wanflow.io.video import check_writable, remove_stale_temps

    args = with_workflow(args) if args.workflow else args
    options = generate_options(args)
    runtime = runtime_options(args)
    runtime.resolved_device()  # a device this machine lacks: one line now, not a traceback after the loading
    layout, task = checkpoint_and_task(args)
    checked = resolve(options, task, image_hint="an input image: --image PATH")  # every value, before any loading
    check_call_strengths(args, checked)
    read = dict(image=checked.image, last_image=checked.last_image, video=checked.video, extend=checked.extend)
    read["image"] = None if checked.extend and options.image is None else read["image"]  # (taken from the video again)
    options = dataclasses.replace(options, **read)
    save_file = args.save_file or default_save_file(args.task, args.size, options.prompt)
    check_writable(save_file)
    check_preview_file(args.preview)
    check_cache_calibration(options, layout, task)
    ctx = launch(args)
    try:
        if ctx.is_rank0:  # the one writer: what a killed run left beside the same output goes
            remove_stale_temps(save_file)
        if layout is None:  # a Hub repository, downloaded after the checks
            layout, task = _download(args.ckpt_dir, task)
        return generate(args, ctx, layout, task, options, runtime, save_file)
    finally:
        if ctx.is_distributed:
            from wanflow.runtime.distributed import shutdown

            shutdown()


def generate(args, ctx, layout, task: Task, options: GenerateOptions, runtime: RuntimeOptions, save_file: str) -> int:
    from dataclasses import replace

    from wanflow.pipelines.pipeline import WanPipeline
    from wanflow.pipelines.progress import Progress, TqdmProgress
    from wanflow.runtime.offload import choose_policy

    if ctx.is_distributed:
        runtime = replace(runtime, offload=choose_policy(runtime.offload, ctx.device, distributed=True))
        options = replace(options, seed=ctx.seed)
    runtime = replace(runtime, device=runtime.device or ctx.device)
    loras = cli_loras(args, layout)  # read and checked against the DiT configs before the weights load
    extender = cli_extender(args, options.image is not None, ctx.is_rank0)  # before the video models, as loras
    start = time.perf_counter()
    pipe = WanPipeline.from_pretrained(layout, task=task, **vars(runtime))
    per_call = load_cli_loras(pipe, loras, getattr(args, "lora_merge", False))
    options = replace(options, call_loras=per_call) if per_call else options
    pipe.set_prompt_extender(extender)
    if ctx.is_distributed:
        from wanflow.pipelines.parallel import parallelize_pipeline

        flags = ("ulysses_size", "dit_fsdp", "cfg_parallel", "t5_fsdp")
        parallelize_pipeline(pipe, ctx, **{name: getattr(args, name) for name in flags})
    load_time = time.perf_counter() - start
    hooks = [preview_writer(pipe, args.preview)] if args.preview and ctx.is_rank0 else []
    with out_of_memory_as_error(), warned_already():
        video = pipe(options, progress=TqdmProgress() if ctx.is_rank0 else Progress(), hooks=hooks)
    if not ctx.is_rank0:
        return 0  # only rank 0 writes the file
    if options.seed is None or options.seed < 0:
        print(f"seed: {video.seed}", file=sys.stderr)
    if args.fps is not None:
        video = replace(video, fps=args.fps)  # (the same frames, shown at another rate)
    with out_of_memory_as_error():
        path = video.save(save_file)
    print(summary(video, load_time, time.perf_counter() - start, path))
    return 0


@contextmanager
def warned_already():
    """The pipeline resolves the options again: the warnings of that (a size it was not trained at) were printed by
    the check before the loading, so they are not printed twice."""
    import logging

    logger = logging.getLogger("wanflow.pipelines.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def out_of_memory_as_error():
    """Running out of memory past the pipeline's estimate (a lower bound) is a one-line error too, with what to try."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        memory = isinstance(e, (torch.OutOfMemoryError, MemoryError))
        if not memory and not any(text in str(e) for text in ("can't allocate memory", "out of memory")):
            raise
        raise ValueError(
            f"out of memory ({str(e).splitlines()[0][:200]}); try a smaller --size or --frame_num, --offload block, "
            "or --vae_tile"
        ) from None


def check_preview_file(path: str | None) -> None:
    import os

    from wanflow.io.video import check_writable

    if path is not None:
        if not path.lower().endswith(".png"):
            raise ValueError(f"--preview writes a PNG image: give a path ending in .png, got {path!r}")
        check_writable(os.path.join(os.path.dirname(path) or ".", ""))  # its folder (made if missing)


def check_cache_calibration(options: GenerateOptions, layout, task: Task) -> None:
    """With --cache magcache, the checkpoint's calibration must exist: said before minutes of loading (a Hub
    repository is checked once downloaded, by the pipeline)."""
    from wanflow.runtime.step_cache import CacheSettings, parse_cache

    if isinstance(parse_cache(options.cache), CacheSettings) and layout is not None:
        from wanflow.runtime.cache_curve import load_curve

        load_curve(layout.root, task.name)


def preview_writer(pipe, path: str):
    """A step hook that rewrites ``path`` (atomically) with the live preview every few steps."""
    from wanflow.runtime.preview import save_png_atomic

    return pipe.preview(lambda image, step: save_png_atomic(image, path))


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


def checkpoint_and_task(args: argparse.Namespace):
    """The checkpoint's layout (the built-in model when no --ckpt_dir is given; None for a Hub repo not downloaded
    yet) and the task with the defaults the checkpoint stores, each found once."""
    from wanflow.builtin import builtin_checkpoint
    from wanflow.checkpoints.hub import is_hub_id, local_checkpoint
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.pipelines.pipeline import checkpoint_task

    task = get_task(args.task)
    if given_files(args):  # components one by one, completing --ckpt_dir if given
        base = detect_layout(local_checkpoint(args.ckpt_dir)) if args.ckpt_dir else None
        layout = files_layout_from_args(args, base)
        return layout, checkpoint_task(layout, task)
    if args.ckpt_dir is not None and is_hub_id(args.ckpt_dir):
        return None, task  # checked with the task's own defaults, downloaded after the checks
    layout = detect_layout(args.ckpt_dir or builtin_checkpoint(args.task))
    task = checkpoint_task(layout, task)
    if args.ckpt_dir is None:
        w, h = task.size
        print(
            f"using the built-in {args.task} model ({w}x{h}, {task.frames} frames, {task.steps} steps); "
            "pass --ckpt_dir for the published weights",
            file=sys.stderr,
        )
    return layout, task


def _download(repo_id: str, task: Task):
    from wanflow.checkpoints.hub import local_checkpoint
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.pipelines.pipeline import checkpoint_task

    layout = detect_layout(local_checkpoint(repo_id))
    return layout, checkpoint_task(layout, task)


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
