"""wanflow vs diffusers, stage by stage, in one run: the same random weights, dtypes, attention backend and noise.

    # CPU, small shapes (dim 256, 4 layers, 192 tokens, small umT5 and VAE), about a minute:
    python benchmarks/pipeline_vs_diffusers.py --threads 2 --peak-tflops 0.2
    python benchmarks/pipeline_vs_diffusers.py --threads 1 --repeats 1 --profile   # + top ops of one DiT step
    # GPU, real shapes (weights built on the meta device, random values drawn on the GPU in bf16):
    python benchmarks/pipeline_vs_diffusers.py --variant t2v-A14B --size 832*480 --device cuda
    python benchmarks/pipeline_vs_diffusers.py --variant t2v-A14B --size 1280*720 --device cuda --repeats 1
    python benchmarks/pipeline_vs_diffusers.py --variant ti2v-5B --size 1280*704 --frames 121 --device cuda

Stages, each timed on its own (device synchronised) and then once together end to end (``--steps`` steps):
text encode (prompt + negative prompt), one DiT step (one CFG velocity: wanflow batches both passes, diffusers'
pipeline calls its transformer twice, both are what their pipelines do), VAE decode (latents to frames), the whole
pipeline call. TFLOP/s use the FLOP model of ``benchmarks/flops.py``; the fraction of peak needs ``--peak-tflops``
(default on CUDA: 989.4, the dense bf16 peak of an H100/H200). Peak memory is the CUDA allocator's peak during the
end-to-end call, or on the CPU (Linux) the growth of the resident set's high-water mark over it.

Both pipelines hold the same tensors: diffusers' modules are loaded with ``assign=True`` from wanflow's state dicts
(its own float32 islands are cast copies), and A14B runs one expert for both noise levels (the experts have the
same shapes, so the step time is the same; the switch itself is not measured).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flops import dit_forward, dit_tokens, t5_encode, vae_decode

from wanflow.checkpoints.layouts import Layout
from wanflow.checkpoints.load import Components
from wanflow.checkpoints.maps import init_kwargs
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, dit_config_to_diffusers
from wanflow.checkpoints.maps.vae import vae_config_to_diffusers, vae_keymap
from wanflow.cli.generate import parse_size
from wanflow.configs import DIT_CONFIGS, UMT5_XXL, VAE_CONFIGS, T5Config
from wanflow.models import attention
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.models.text_encoder import TextEncoder, build_umt5
from wanflow.models.vae import WanVAE
from wanflow.pipelines.core import guided_velocity, model_timesteps
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.progress import Progress
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.precision import cast_model
from wanflow.tasks import TASKS
from wanflow.training.tokenizer import build_tokenizer

PROMPT = "a white cat wearing sunglasses sits on a surfboard at the beach"
DIFFUSERS_ATTENTION = {"sdpa": "native", "flash2": "flash", "flash3": "_flash_3"}
SMALL_T5 = T5Config(vocab_size=1024, dim=256, dim_attn=256, dim_ffn=512, num_heads=4, num_layers=2)


def configs(args):
    """(DiT, VAE, T5, task) configs: a real variant, or the small CPU one."""
    task = TASKS[args.variant or "t2v-A14B"]
    vae = VAE_CONFIGS["wan2.2" if task.model_type == "ti2v" else "wan2.1"]
    if args.variant:
        return DIT_CONFIGS[args.variant], vae, UMT5_XXL, task
    dit = DIT_CONFIGS["t2v-A14B"].replace(
        dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads, num_layers=args.layers, text_dim=SMALL_T5.dim
    )
    return dit, vae.replace(base_dim=16, decoder_dim=args.vae_dim), SMALL_T5, task


def materialise(module: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
    """Storage on ``device`` for a module built on the meta device, filled with N(0, 0.02); norm scales are 1, so
    activations keep their size (no denormals on the CPU)."""
    module.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma") or ("norm" in name and p.ndim == 1):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return module.eval().requires_grad_(False)


def build_ours(args, device: torch.device, dtype: torch.dtype, folder: Path) -> WanPipeline:
    dit_cfg, vae_cfg, t5_cfg, task = configs(args)
    with torch.device("meta"):
        dit, vae, umt5 = WanDiT(dit_cfg), WanVAE(vae_cfg), build_umt5(t5_cfg)
    cast_model(dit, dtype, keep_fp32=FP32_MODULES)
    umt5.to(torch.bfloat16 if device.type == "cuda" else dtype)  # as stored by the reference
    dit, vae, umt5 = materialise(dit, device, 0), materialise(vae, device, 1), materialise(umt5, device, 2)
    umt5.tie_weights()  # to_empty gave the tied token embedding two storages
    tokenizer = build_tokenizer([PROMPT, task.negative_prompt], folder / "tokenizer", vocab_size=t5_cfg.vocab_size)
    names = ("high", "low") if task.boundary is not None else ("dense",)
    layout = Layout("official", folder, {n: folder for n in names}, None, None, None)
    components = Components(layout, dict.fromkeys(names, dit), vae, TextEncoder(tokenizer, umt5, t5_cfg.text_len))
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = WanPipeline(components, task, device=device, dtype=None if dtype == default else dtype, offload="resident")
    if args.compile:
        compile_blocks(dit)
    return pipe


def build_theirs(ours: WanPipeline, args):
    """diffusers' ``WanPipeline`` on the tensors of ``ours``."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from diffusers import WanPipeline as DiffusersPipeline

    dit = next(iter(ours.experts.values()))
    with init_empty_weights():  # parameters on meta, buffers (RoPE tables) real
        transformer = WanTransformer3DModel(**init_kwargs(dit_config_to_diffusers(dit.cfg)))
        vae = AutoencoderKLWan(**init_kwargs(vae_config_to_diffusers(ours.vae.cfg)))
    transformer.load_state_dict(DIT_KEYMAP.forward(dit.state_dict()), strict=True, assign=True)
    compute = dit.blocks[0].self_attn.q.weight.dtype
    cast_model(transformer, compute, keep_fp32=tuple(WanTransformer3DModel._keep_in_fp32_modules))
    vae.load_state_dict(vae_keymap(ours.vae.cfg).forward(ours.vae.state_dict()), strict=True, assign=True)
    transformer.set_attention_backend(DIFFUSERS_ATTENTION[args.attention])
    if args.compile:
        transformer.compile_repeated_blocks()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=ours.task.shift, solver_order=2
    )
    pipe = DiffusersPipeline(
        tokenizer=ours.text_encoder.tokenizer,
        text_encoder=ours.text_encoder.model,
        vae=vae.eval(),
        scheduler=scheduler,
        transformer=transformer.eval(),
        expand_timesteps=ours.task.model_type == "ti2v",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(ours.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best seconds of ``repeats`` calls (the minimum: a shared machine only ever adds time)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """CUDA: the allocator's peak over the block. CPU (Linux, glibc): the growth of the resident set's high-water
    mark (reset by writing 5 to /proc/self/clear_refs) over the block."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        out["peak"] = torch.cuda.max_memory_allocated(device)
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so the resident set is what is live
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status_bytes("VmRSS")
    yield
    out["peak"] = _status_bytes("VmHWM") - start


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def stage_fns(ours: WanPipeline, theirs, args, latents: torch.Tensor) -> dict[str, dict[str, Callable[[], object]]]:
    """The calls that are timed, per stage and side."""
    request = resolve(GenerateOptions(PROMPT, size=args.size, frames=args.frames), ours.task, ours.size_multiple)
    cond = ours.encode_prompts(request, Progress())
    dit = next(iter(ours.experts.values()))
    t = model_timesteps(900, latents, None, ours.patch)
    with torch.no_grad():
        embeds = theirs.encode_prompt(PROMPT, ours.task.negative_prompt, device=ours.device, max_sequence_length=512)
    xd = latents.to(theirs.transformer.dtype)
    if ours.task.model_type == "ti2v":  # diffusers' expand_timesteps: one timestep per token
        td = torch.full((1, dit_tokens(dit.cfg, latents.shape[2:])), 900, device=latents.device)
    else:
        td = t

    def their_step() -> None:
        for context in embeds:
            theirs.transformer(hidden_states=xd, timestep=td, encoder_hidden_states=context, return_dict=False)

    def their_decode() -> None:
        vae = theirs.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents.device, vae.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents.device, vae.dtype)
        video = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
        theirs.video_processor.postprocess_video(video, output_type="np")

    kw = dict(size=args.size, frames=args.frames, steps=args.steps, latents=latents, seed=0)
    w, h = request.size
    their_kw = dict(height=h, width=w, num_frames=request.frames, num_inference_steps=args.steps, latents=latents)
    return {
        "text encode": {
            "wanflow": lambda: ours.encode_prompts(request, Progress()),
            "diffusers": lambda: theirs.encode_prompt(
                PROMPT, ours.task.negative_prompt, device=ours.device, max_sequence_length=512
            ),
        },
        "DiT step": {
            "wanflow": lambda: guided_velocity(dit, latents, t, cond, 5.0),
            "diffusers": their_step,
        },
        "VAE decode": {"wanflow": lambda: ours.decode(latents, Progress()), "diffusers": their_decode},
        "end to end": {
            "wanflow": lambda: ours(PROMPT, **kw),
            "diffusers": lambda: theirs(PROMPT, ours.task.negative_prompt, **their_kw, output_type="np"),
        },
    }


def measure(fns, args, device: torch.device) -> tuple[dict, dict]:
    """Best time per stage and side, the sides interleaved (load on a shared machine hits both alike), after one
    untimed call each; and the peak memory of each side's end-to-end call (run once: its stages are warm by then)."""
    times: dict[str, dict[str, float]] = {stage: dict.fromkeys(sides, float("inf")) for stage, sides in fns.items()}
    memory: dict[str, int] = {}
    with torch.inference_mode():
        for stage, sides in fns.items():
            last = stage == "end to end"
            if not args.no_warmup and (not last or args.compile):
                for fn in sides.values():
                    fn()
            for _ in range(1 if last else args.repeats):
                for side, fn in sides.items():
                    out: dict = {}
                    with peak_memory(device, out) if last else contextlib.nullcontext():
                        times[stage][side] = min(times[stage][side], best(fn, 1, device))
                    memory.update({side: out["peak"]} if last else {})
    return times, memory


def profile_step(sides: dict[str, Callable[[], object]], device: torch.device) -> None:
    """torch.profiler's busiest ops of one DiT step per side (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with torch.inference_mode():
        for side, fn in sides.items():
            fn()
            with profile(activities=activities) as prof:
                fn()
                sync(device)
            sort = "self_device_time_total" if cuda else "self_cpu_time_total"
            print(f"{side}: one DiT step\n{prof.key_averages().table(sort_by=sort, row_limit=15)}")


def stage_flops(ours: WanPipeline, args, latents: torch.Tensor) -> dict[str, float]:
    dit = next(iter(ours.experts.values()))
    t5 = ours.text_encoder.model.config
    t5_cfg = T5Config(dim=t5.d_model, dim_attn=t5.num_heads * t5.d_kv, dim_ffn=t5.d_ff, num_layers=t5.num_layers)
    step = 2 * dit_forward(dit.cfg, dit_tokens(dit.cfg, latents.shape[2:]))
    w, h = args.size
    flops = {"text encode": 2 * t5_encode(t5_cfg, ours.text_encoder.text_len), "DiT step": step}
    flops["VAE decode"] = vae_decode(ours.vae.cfg, args.frames, h, w)
    flops["end to end"] = flops["text encode"] + args.steps * step + flops["VAE decode"]
    return flops


def report(times, memory, flops, args, latents) -> None:
    peak = args.peak_tflops
    print(
        f"{args.variant or 'small config'}: {args.size[0]}x{args.size[1]}x{args.frames}, latent "
        f"{tuple(latents.shape[1:])}, {args.dtype} on {args.device}, attention {args.attention}, "
        f"{args.steps} steps end to end, compile {args.compile}, torch threads {torch.get_num_threads()}"
    )
    head = f"{'stage':<12} {'side':<10} {'seconds':>10} {'TFLOP/s':>9}" + (f" {'of peak':>8}" if peak else "")
    print(head)
    for stage, sides in times.items():
        for side, sec in sides.items():
            rate = flops[stage] / sec / 1e12
            line = f"{stage:<12} {side:<10} {sec:>10.4f} {rate:>9.3f}" + (f" {rate / peak:>8.1%}" if peak else "")
            print(line)
        ratio = sides["diffusers"] / sides["wanflow"]
        print(f"{'':<12} {'diffusers / wanflow':<21} {ratio:.2f}x   ({flops[stage] / 1e12:.4g} TFLOP)")
    for side, peak_bytes in memory.items():
        print(f"peak memory ({side}, end to end): {peak_bytes / 2**30:.2f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=["t2v-A14B", "ti2v-5B"], help="real-size models (default: a small config)")
    p.add_argument("--dim", type=int, default=256, help="small config: DiT width")
    p.add_argument("--layers", type=int, default=4, help="small config: DiT blocks")
    p.add_argument("--heads", type=int, default=4, help="small config: DiT heads")
    p.add_argument("--vae-dim", type=int, default=16, help="small config: VAE decoder base width")
    p.add_argument("--size", type=parse_size, default=None, help="WIDTH*HEIGHT (default 128*128, or 832*480)")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=2, help="denoising steps of the end-to-end call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="DiT dtype (default: bf16 on CUDA, else fp32)")
    p.add_argument("--attention", choices=sorted(DIFFUSERS_ATTENTION), default="sdpa")
    p.add_argument("--compile", action="store_true", help="regional torch.compile on both sides")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per stage (best is kept)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first call of each stage")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", action="store_true", help="first print the profiler's top ops of one DiT step")
    p.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for the dtype (CUDA: 989.4)")
    args = p.parse_args()
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.size = args.size or ((832, 480) if args.variant else (128, 128))
    if args.peak_tflops is None and device.type == "cuda" and args.dtype == "bfloat16":
        args.peak_tflops = 989.4
    if args.threads:
        torch.set_num_threads(args.threads)
    ours_backend = attention.default_backend(device.type, getattr(torch, args.dtype), 128)
    if ours_backend != args.attention:  # wanflow reads the choice once, at import
        raise SystemExit(f"wanflow attends with {ours_backend} here: run with {attention.ENV}={args.attention}")
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(args, device, getattr(torch, args.dtype), Path(tmp))
        theirs = build_theirs(ours, args)
        w, h = args.size
        s = ours.vae.cfg.stride
        latents = ours.noise((ours.vae.cfg.z_dim, (args.frames - 1) // s[0] + 1, h // s[1], w // s[2]), seed=0)
        fns = stage_fns(ours, theirs, args, latents)
        if args.profile:
            profile_step(fns["DiT step"], device)
        times, memory = measure(fns, args, device)
        report(times, memory, stage_flops(ours, args, latents), args, latents)


if __name__ == "__main__":
    main()
