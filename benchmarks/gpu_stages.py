"""The measurements of ``gpu_suite.py``: DiT steps against diffusers, compile and FP8, memory policies, few-step,
VAE decode and a LoRA beside the weights. Each stage takes the suite (``gpu_suite.Suite``) and reports rows through
``suite.add`` as soon as it has them, so that a run cut short keeps what it measured.

Only model-level wanflow APIs are used (the model, configs, key map, precision, fp8, compile, offload, VAE and its
tiling), never the pipeline's internals. Weights are random, drawn on the device in place (``random_dit``);
diffusers' transformer is given the same tensors (``diffusers_twin``), so an A14B expert and its twin hold one copy.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import vae_tiling
from flops import dit_forward, dit_tokens, vae_decode
from lora_step import random_lora
from torch import nn

from wanflow.checkpoints.lora import parse_lora
from wanflow.checkpoints.maps import init_kwargs
from wanflow.checkpoints.maps.dit import DIT_KEYMAP, dit_config_to_diffusers
from wanflow.configs import DIT_CONFIGS, VAE_CONFIGS, DiTConfig
from wanflow.models.dit import FP32_MODULES, WanDiT
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.lora import apply_lora
from wanflow.runtime.offload import ExpertPlacement
from wanflow.runtime.precision import cast_model
from wanflow.runtime.vae_tiling import decode_tiled

if TYPE_CHECKING:
    from gpu_suite import Suite

TIMESTEP = 900  # any value: the cost of a step does not depend on it
VAE_TILE = 32  # latent pixels per tile (benchmarks/vae_tiling.py's middle setting)


@dataclass(frozen=True)
class Workload:
    """One DiT workload: the config and the video it denoises (published shapes, or the dry run's stand-in)."""

    label: str
    variant: str  # key of DIT_CONFIGS
    vae: str  # key of VAE_CONFIGS
    width: int
    height: int
    frames: int
    cfg: DiTConfig

    @property
    def latent(self) -> tuple[int, int, int]:
        st, s, _ = VAE_CONFIGS[self.vae].stride
        return ((self.frames - 1) // st + 1, self.height // s, self.width // s)

    @property
    def tokens(self) -> int:
        return dit_tokens(self.cfg, self.latent)

    def flops(self, forwards: int = 2) -> float:
        """Model FLOPs of ``forwards`` batch-1 forwards (a CFG step is two)."""
        return forwards * dit_forward(self.cfg, self.tokens)


REAL = {  # key: (label, DiT, VAE, width, height, frames)
    "a14b-480p": ("A14B 832x480x81", "t2v-A14B", "wan2.1", 832, 480, 81),
    "a14b-720p": ("A14B 1280x720x81", "t2v-A14B", "wan2.1", 1280, 720, 81),
    "5b-720p": ("TI2V-5B 1280x704x121", "ti2v-5B", "wan2.2", 1280, 704, 121),
    "a14b-train": (
        "A14B 832x480x21",
        "t2v-A14B",
        "wan2.1",
        832,
        480,
        21,
    ),  # a LoRA training sample: 480p, 6 latent frames
}
DRY = {  # the same code paths in seconds on a CPU: 2 narrow blocks, a few tokens
    "a14b-480p": (64, 48, 5),
    "a14b-720p": (96, 64, 5),
    "5b-720p": (128, 64, 5),
    "a14b-train": (64, 48, 5),
}


def workload(key: str, dry: bool) -> Workload:
    label, variant, vae, width, height, frames = REAL[key]
    cfg = DIT_CONFIGS[variant]
    if dry:
        width, height, frames = DRY[key]
        label = f"{label} (dry: dim 64, 2 blocks, {width}x{height}x{frames})"
        cfg = cfg.replace(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=16)
    return Workload(label, variant, vae, width, height, frames, cfg)


# ---------------------------------------------------------------- building


def random_dit(cfg: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> WanDiT:
    """A DiT with random weights drawn on ``device``: built on the meta device, storage allocated there, filled in
    place (an A14B expert in well under a second on a GPU, where a CPU init and a copy would take minutes).
    Weights N(0, 1/fan_in), norm scales 1, biases 0, so activations keep their size through 40 blocks. The same
    seed gives the same weights, which lets a stage rebuild a model and keep its bf16 reference output.

    (``pipeline_vs_diffusers.materialise`` does the same, but importing that script pulls in the pipeline's
    internals, which are being changed; this suite uses model-level APIs only.)"""
    with torch.device("meta"):
        model = WanDiT(cfg)
    cast_model(model, dtype, keep_fp32=FP32_MODULES)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            else:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
    return model.eval().requires_grad_(False)


def diffusers_twin(model: WanDiT, device: torch.device) -> nn.Module:
    """diffusers' ``WanTransformer3DModel`` on the very tensors of ``model`` (``load_state_dict(assign=True)`` of the
    key-mapped state dict), so no second copy of the weights exists. Its own float32 islands become small cast
    copies; everything else is shared (``shared_fraction`` checks it)."""
    from accelerate import init_empty_weights  # parameters on meta, buffers (RoPE tables) real
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        twin = WanTransformer3DModel(**init_kwargs(dit_config_to_diffusers(model.cfg)))
    twin.load_state_dict(DIT_KEYMAP.forward(model.state_dict()), strict=True, assign=True)
    compute = model.blocks[0].ffn[0].weight.dtype
    cast_model(twin, compute, keep_fp32=tuple(WanTransformer3DModel._keep_in_fp32_modules))
    return twin.to(device).eval().requires_grad_(False)


def shared_fraction(model: nn.Module, twin: nn.Module) -> float:
    """Fraction of the twin's parameter bytes that live in ``model``'s storage."""
    ours = {p.data_ptr() for p in model.parameters()}
    sizes = [(p.numel() * p.element_size(), p.data_ptr() in ours) for p in twin.parameters()]
    return sum(n for n, shared in sizes if shared) / sum(n for n, _ in sizes)


def build_pair(suite: Suite, cfg: DiTConfig) -> tuple[WanDiT, nn.Module | None, str]:
    """wanflow's DiT and diffusers' twin on the same weights; the twin is None (with the reason) where diffusers
    cannot be imported or built, so wanflow's figures are still measured."""
    model = random_dit(cfg, suite.device, suite.dtype)
    try:
        return model, diffusers_twin(model, suite.device), ""
    except Exception as e:  # a missing wheel, or a diffusers that does not fit this torch
        return model, None, f"diffusers unavailable: {type(e).__name__}: {e}"[:300]


# ---------------------------------------------------------------- timing


@dataclass
class Timed:
    seconds: list[float]  # each timed call
    warmup: list[float]  # each untimed first call (compilation shows here)
    output: object
    peak: int | None  # the CUDA allocator's peak over all calls, bytes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(suite: Suite, fn: Callable[[], object], repeats: int, warmup: int = 1, grad: bool = False) -> Timed:
    """Wall seconds of ``warmup`` untimed and ``repeats`` timed calls (device synchronised around each; every call
    here runs for seconds, so launch gaps do not matter), the last output, and the peak memory over all calls.
    Without gradients unless ``grad`` (a training step)."""
    device = suite.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    output = None
    # not inference_mode: the offload policies swap parameter storage during the calls
    with torch.enable_grad() if grad else torch.no_grad():
        for _ in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            output = fn()
            sync(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Timed(times[warmup:], times[:warmup], output, peak)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float32."""
    ref = ref.float()
    return ((out.float() - ref).norm() / ref.norm()).item()


def step_inputs(suite: Suite, work: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy latents (1, C, T, H, W) in float32 and the CFG pair of text states (2, text_len, text_dim)."""
    gen = torch.Generator(device=suite.device).manual_seed(1)
    x = torch.randn(1, work.cfg.in_dim, *work.latent, generator=gen, device=suite.device)
    shape = (2, work.cfg.text_len, work.cfg.text_dim)
    return x, torch.randn(*shape, generator=gen, device=suite.device).to(suite.dtype)


def wanflow_step(model: nn.Module, x: torch.Tensor, context: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One CFG step as wanflow samples it: both passes in one batch of 2."""
    t = torch.full((2,), TIMESTEP, dtype=torch.long, device=x.device)
    return lambda: model(torch.cat([x, x]), t, context)


def diffusers_step(twin: nn.Module, work: Workload, x: torch.Tensor, context: torch.Tensor) -> Callable[[], object]:
    """One CFG step as diffusers' pipeline runs it: two batch-1 calls; TI2V with a timestep per token
    (``expand_timesteps``), as its pipeline does."""
    xd = x.to(context.dtype)
    shape = (1, work.tokens) if work.cfg.model_type == "ti2v" else (1,)
    t = torch.full(shape, TIMESTEP, dtype=torch.long, device=x.device)

    def step() -> torch.Tensor:
        outs = [
            twin(hidden_states=xd, timestep=t, encoder_hidden_states=c[None], return_dict=False)[0] for c in context
        ]
        return torch.cat(outs)

    return step


# ---------------------------------------------------------------- stages


def compare_sides(suite: Suite, stage: str, work: Workload, pair: tuple, warmup: int, repeats: int) -> float:
    """Rows for one CFG step, wanflow then diffusers on the same weights and inputs; returns wanflow's seconds."""
    model, twin, why = pair
    x, context = step_inputs(suite, work)
    flops = work.flops()
    ours = measure(suite, wanflow_step(model, x, context), repeats, warmup)
    suite.add(stage, f"{work.label}: wanflow CFG step (batch of 2)", ours.seconds, flops, ours.peak)
    if twin is None:
        suite.add(stage, f"{work.label}: diffusers CFG step", status="error", note=why)
        return min(ours.seconds)
    try:
        theirs = measure(suite, diffusers_step(twin, work, x, context), repeats, warmup)
    except Exception as e:  # wanflow's row stands; the caller's figures (stage 1's rate) too
        note = f"{type(e).__name__}: {e}"[:300]
        suite.add(stage, f"{work.label}: diffusers CFG step", status="error", note=note)
        return min(ours.seconds)
    speed, shared = min(theirs.seconds) / min(ours.seconds), shared_fraction(model, twin)
    note = f"wanflow {speed:.2f}x diffusers' speed; {shared:.1%} of diffusers' weight bytes are wanflow's tensors"
    err = rel_err(theirs.output, ours.output)
    what = f"{work.label}: diffusers CFG step (2 calls)"
    suite.add(stage, what, theirs.seconds, flops, theirs.peak, err, note, shared=shared)
    return min(ours.seconds)


def stage_a14b_480p(suite: Suite) -> None:
    """Stage 1: the headline figure. The pair stays in ``suite.keep`` for the 720p step of stage 2a."""
    work = suite.workload("a14b-480p")
    pair = suite.keep.get("a14b") or build_pair(suite, work.cfg)
    suite.keep["a14b"] = pair
    seconds = compare_sides(suite, "1", work, pair, warmup=1, repeats=suite.repeats)
    suite.rate_tflops = work.flops() / seconds / 1e12  # for the later stages' time estimates


def stage_a14b_720p(suite: Suite) -> None:
    """Stage 2a: A14B at 720p on stage 1's weights; one call per side (the kernels are warm, a call takes tens of
    seconds)."""
    work = suite.workload("a14b-720p")
    pair = suite.keep.pop("a14b", None) or build_pair(suite, work.cfg)
    compare_sides(suite, "2a", work, pair, warmup=0, repeats=1)


def stage_5b_720p(suite: Suite) -> None:
    """Stage 2b: TI2V-5B at 1280x704x121."""
    work = suite.workload("5b-720p")
    compare_sides(suite, "2b", work, build_pair(suite, work.cfg), warmup=1, repeats=suite.repeats)


def add_variant(suite: Suite, stage: str, what: str, model: nn.Module, ref: torch.Tensor, warmup: int) -> None:
    """One row of stage 3: a step of ``model`` (A14B 480p) against the eager reference output."""
    work = suite.workload("a14b-480p")
    x, context = step_inputs(suite, work)
    run = measure(suite, wanflow_step(model, x, context), repeats=1, warmup=warmup)
    note = f"first call {run.warmup[0]:.1f} s (compilation)" if run.warmup else ""
    suite.add(stage, f"{work.label}: {what}", run.seconds, work.flops(), run.peak, rel_err(run.output, ref), note)


def eager_reference(suite: Suite, stage: str, model: nn.Module) -> torch.Tensor:
    """The eager step's output, which stage 3 compares with; kept in ``suite.keep`` for stage 3b."""
    work = suite.workload("a14b-480p")
    run = measure(suite, wanflow_step(model, *step_inputs(suite, work)), repeats=1, warmup=0)
    what = f"{work.label}: {suite.dtype_name} eager (reference)"
    suite.add(stage, what, run.seconds, work.flops(), run.peak)
    suite.keep["ref"] = run.output
    return run.output


def stage_compile(suite: Suite) -> None:
    """Stage 3a: regional compile (``compile_blocks``) against the eager step of the same model."""
    model = random_dit(suite.workload("a14b-480p").cfg, suite.device, suite.dtype)
    ref = eager_reference(suite, "3a", model)
    compile_blocks(model, **suite.compile_options)
    add_variant(suite, "3a", f"{suite.dtype_name} + compile", model, ref, warmup=1)
    torch._dynamo.reset()


def stage_fp8(suite: Suite) -> None:
    """Stage 3b: FP8 weights, eager then compiled, against 3a's eager output (rebuilt from the same seed: the
    same weights), or this stage's own when 3a did not run."""
    model = random_dit(suite.workload("a14b-480p").cfg, suite.device, suite.dtype)
    ref = suite.keep["ref"] if "ref" in suite.keep else eager_reference(suite, "3b", model)
    quantize_fp8(model)
    add_variant(suite, "3b", f"fp8 e4m3 weights, {suite.dtype_name} compute", model, ref, warmup=0)
    compile_blocks(model, **suite.compile_options)
    add_variant(suite, "3b", "fp8 + compile", model, ref, warmup=1)
    torch._dynamo.reset()


def to_host(model: nn.Module, pin: bool) -> int:
    """Move every parameter into one host buffer (page-locked for the CUDA policies: one allocation, where one per
    tensor would each be rounded up to a power of two by the pinned allocator); returns its bytes."""
    params = list(model.parameters())
    sizes = [-(-p.numel() * p.element_size() // 256) * 256 for p in params]  # 256-byte aligned slots
    flat = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=pin)
    offset = 0
    for p, size in zip(params, sizes, strict=True):
        host = flat[offset : offset + p.numel() * p.element_size()].view(p.dtype).view(p.shape)
        host.copy_(p.data)
        p.data = host
        offset += size
    return flat.numel()


@contextlib.contextmanager
def memory_cap(device: torch.device, gb: float):
    """This process's CUDA allocator capped at ``gb`` GB, as on a smaller card (the CUDA context is not counted);
    no cap on the CPU."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.empty_cache()  # cached blocks count against the cap
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 1e9 / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def stage_memory(suite: Suite) -> None:
    """Stage 4: the offload policies of ``runtime.offload`` on one A14B expert at 480p: resident; ``model`` (the
    expert copied in whole: the step, and the copy an expert switch costs); ``block`` under a 24 GB cap."""
    work = suite.workload("a14b-480p")
    x, context, flops = *step_inputs(suite, work), work.flops()
    model = random_dit(work.cfg, suite.device, suite.dtype)
    resident = measure(
        suite, wanflow_step(ExpertPlacement({"e": model}, suite.device, "resident")("e"), x, context), 1, 0
    )
    suite.add("4", f"{work.label}: resident", resident.seconds, flops, resident.peak)
    nbytes = to_host(model, pin=suite.device.type == "cuda")
    suite.free()
    placement = ExpertPlacement({"e": model}, suite.device, "model")
    load = measure(suite, lambda: placement("e"), repeats=1, warmup=0).seconds[0]
    run = measure(suite, wanflow_step(placement("e"), x, context), repeats=1, warmup=0)
    note = f"expert copy-in {load:.2f} s ({nbytes / 1e9 / load:.1f} GB/s), paid once per expert switch"
    suite.add("4", f"{work.label}: model offload", run.seconds, flops, run.peak, note=note)
    placement.release()
    placement = None
    suite.free()
    with memory_cap(suite.device, suite.memory_budget_gb):
        step = wanflow_step(ExpertPlacement({"e": model}, suite.device, "block")("e"), x, context)
        run = measure(suite, step, repeats=1, warmup=1)
    ratio = min(run.seconds) / min(resident.seconds)
    note = f"{ratio:.2f}x resident (target <= 1.3x)" + ("" if suite.device.type == "cuda" else "; no cap on the CPU")
    suite.add(
        "4",
        f"{work.label}: block streaming, {suite.memory_budget_gb:g} GB cap",
        run.seconds,
        flops,
        run.peak,
        note=note,
    )


def stage_few_step(suite: Suite) -> None:
    """Stage 5a: the few-step preset's shape: 4 steps without CFG (batch 1) on A14B at 480p."""
    work = suite.workload("a14b-480p")
    x, context = step_inputs(suite, work)
    model = random_dit(work.cfg, suite.device, suite.dtype)
    t = torch.full((1,), TIMESTEP, dtype=torch.long, device=suite.device)
    run = measure(suite, lambda: [model(x, t, context[:1]) for _ in range(4)], repeats=1, warmup=0)
    note = "the preset's shape on random weights (its LoRAs merged add no FLOPs)"
    suite.add("5a", f"{work.label}: 4 steps without CFG", run.seconds, work.flops(4), run.peak, note=note)


def stage_vae(suite: Suite) -> None:
    """Stage 5b: the Wan 2.1 VAE decode of 81 frames at 480p, whole then tiled (compared with the whole one), in
    float32 as the pipeline decodes; one call each."""
    work = suite.workload("a14b-480p")
    opts = SimpleNamespace(vae=work.vae, width_div=12 if suite.dry else 1, device=str(suite.device))
    vae = vae_tiling.build(opts)
    gen = torch.Generator(device=suite.device).manual_seed(2)
    latents = torch.randn(1, vae.cfg.z_dim, *work.latent, generator=gen, device=suite.device)
    flops = vae_decode(vae.cfg, work.frames, work.height, work.width)
    label = f"{work.label}: VAE decode ({opts.vae}, float32)"
    whole = measure(suite, lambda: vae.decode(latents), repeats=1, warmup=0)
    suite.add("5b", f"{label}, whole", whole.seconds, flops, whole.peak)
    tile = 4 if suite.dry else VAE_TILE
    tiled = measure(suite, lambda: decode_tiled(vae, latents, tile), repeats=1, warmup=0)
    err = rel_err(tiled.output, whole.output)
    suite.add("5b", f"{label}, tiles of {tile} latent px", tiled.seconds, flops, tiled.peak, err)


def stage_lora(suite: Suite) -> None:
    """Stage 5c: what a rank-64 LoRA on every block linear (the Lightning LoRAs' reach) costs an A14B CFG step at
    480p beside the weights (``runtime.lora``), against the plain step; merged it is the plain step's work."""
    work = suite.workload("a14b-480p")
    x, context = step_inputs(suite, work)
    model = random_dit(work.cfg, suite.device, suite.dtype)
    plain = measure(suite, wanflow_step(model, x, context), repeats=suite.repeats, warmup=1)
    suite.add("5c", f"{work.label}: plain CFG step", plain.seconds, work.flops(), plain.peak)
    lora = parse_lora(random_lora(work.cfg, 64, torch.device("cpu"))[0], "random rank-64 LoRA")
    apply_lora(model, lora, "lora", 1.0, device=suite.device)
    beside = measure(suite, wanflow_step(model, x, context), repeats=suite.repeats, warmup=1)
    cost = min(beside.seconds) / min(plain.seconds)
    note = f"x{cost:.3f} of the plain step; the LoRA moves the output by this relative error"
    what = f"{work.label}: CFG step, rank-64 LoRA beside the weights"
    suite.add("5c", what, beside.seconds, work.flops(), beside.peak, rel_err(beside.output, plain.output), note)


def release() -> None:
    """Drop what Python no longer references and hand cached device memory back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
