"""``WanPipeline``: load a checkpoint once, then prompt (and image) in, frames out, for every Wan 2.2 task.

The stages: encode the prompts, let the task's conditioning file build the latent shape and inputs, draw the noise,
run the shared denoising loop, decode. How the models run (device, precision, memory policy, compilation) is a
``RuntimeOptions``, applied here to plain models; the transforms that come later (parallelism, hooks) go through the
pipeline's methods (``map_experts``, ``add_hook``, ``decode_over``; ``pipelines.parallel`` uses them).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from wanflow.checkpoints.layouts import Layout, detect_layout
from wanflow.checkpoints.load import Components, load_components
from wanflow.io.video import save_video
from wanflow.models.attention import default_backend
from wanflow.models.dit import FP32_MODULES
from wanflow.models.text_encoder import pad_context
from wanflow.pipelines import lora
from wanflow.pipelines.core import Conditioning, Sampler, denoise
from wanflow.pipelines.progress import Callback, DenoiseProgress, Progress
from wanflow.pipelines.request import GenerateOptions, Request, resolve
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.offload import POLICIES, ExpertPlacement, choose_policy
from wanflow.runtime.precision import cast_model
from wanflow.runtime.vae_tiling import decode_tiled
from wanflow.sampling.experts import boundary_timestep
from wanflow.sampling.hooks import Step, StepHook
from wanflow.sampling.noise import initial_noise
from wanflow.sampling.schedule import get_schedule
from wanflow.sampling.solvers import get_solver
from wanflow.tasks import Task, get_task, task_for_model

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RuntimeOptions:
    """How a pipeline runs its models, whatever the request."""

    device: torch.device | str | None = None  # default: cuda when available
    dtype: torch.dtype | str | None = None  # every component in this dtype; default: bf16 DiT and T5 on a GPU
    convert_model_dtype: bool = False  # the reference's flag: DiT parameters in bf16 (a GPU's default already)
    offload: str | None = None  # a memory policy of ``runtime.offload.POLICIES``; default per device
    t5_cpu: bool = False  # the text encoder on the CPU
    fp8: bool = False  # the experts' block linears stored as e4m3 + per-channel scales (``runtime.fp8``)
    compile: bool = False  # torch.compile each DiT block (``runtime.compile``); traced at the first step
    vae_tile: int = 0  # decode in spatial tiles of this many latent pixels (``runtime.vae_tiling``); 0 = whole

    def __post_init__(self) -> None:
        if self.vae_tile < 0:
            raise ValueError(f"vae_tile is a tile size in latent pixels (0 = no tiling), got {self.vae_tile}")
        if self.offload is not None and self.offload not in POLICIES:
            raise ValueError(f"unknown offload policy {self.offload!r}; choose one of {POLICIES}")
        if isinstance(self.dtype, str) and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")

    def resolved_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else default_device()

    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if isinstance(self.dtype, str) else self.dtype

    def dit_dtype(self, device: torch.device) -> torch.dtype:
        """bf16 on a GPU or when converted (the reference's islands kept float32), float32 on the CPU."""
        if self.convert_model_dtype:
            return torch.bfloat16
        return self.torch_dtype() or (torch.bfloat16 if device.type == "cuda" else torch.float32)


@dataclass
class Video:
    """A generated video: (3, F, H, W) float32 frames in [-1, 1] and how they were made."""

    frames: torch.Tensor
    fps: int
    seed: int
    metadata: dict[str, object]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    peak_memory: int | None = None  # bytes on the device (CUDA only)

    def save(self, path: str | os.PathLike) -> Path:
        return save_video(self.frames, path, fps=self.fps, metadata=self.metadata)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class WanPipeline:
    """One task's models, kept loaded between calls."""

    def __init__(
        self, components: Components, task: Task | None = None, runtime: RuntimeOptions | None = None, **options
    ):
        """``task``: the task with its final defaults (default: the checkpoint's model type, with the defaults its
        ``wanflow.json`` stores); ``runtime`` or ``options`` (its fields): how the models run."""
        runtime = runtime or RuntimeOptions(**options)
        self.device = runtime.resolved_device()
        dit_cfg = next(iter(components.experts.values())).cfg
        self.task = task or checkpoint_task(components.layout, task_for_model(dit_cfg.model_type))
        if self.task.model_type != dit_cfg.model_type:
            raise ValueError(
                f"task {self.task.name} needs a {self.task.model_type} model, but the checkpoint holds a "
                f"{dit_cfg.model_type} model"
            )
        if self.task.is_moe != components.layout.is_moe:
            raise ValueError(f"task {self.task.name} and the checkpoint disagree on the number of experts")
        self.patch = dit_cfg.patch_size
        self.runtime = runtime
        dtype = runtime.torch_dtype()
        self.vae = components.vae.to(self.device, dtype or torch.float32)
        self.text_encoder = components.text_encoder
        if dtype is not None:
            self.text_encoder.to(dtype)
        self.t5_device = torch.device("cpu") if runtime.t5_cpu else self.device
        self.offload = choose_policy(runtime.offload, self.device)
        experts = {name: self._prepare_expert(model) for name, model in components.experts.items()}
        dit_dtype = runtime.dit_dtype(self.device)
        backend = default_backend(self.device.type, dit_dtype, dit_cfg.head_dim)
        log.info("%s on %s: DiT in %s, attention %s", self.task.name, self.device, dit_dtype, backend)
        self._placement = ExpertPlacement(experts, self.device, self.offload)
        self._hooks: list[StepHook] = []
        self._decode_group = None  # ranks that share the decode's tiles (``decode_over``)

    def _prepare_expert(self, model: nn.Module) -> nn.Module:
        cast_model(model, self.runtime.dit_dtype(self.device), keep_fp32=FP32_MODULES)
        if self.runtime.fp8:
            quantize_fp8(model)  # after the cast, before the placement pins and moves the weights
        if self.runtime.compile:
            compile_blocks(model)
        return model

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | Layout, task: str | Task | None = None, **options
    ) -> WanPipeline:
        """Load from a local folder in either layout (or its ``Layout``), or a Hugging Face repo id (downloaded with
        huggingface_hub). ``task``: a name, whose defaults the checkpoint's ``wanflow.json`` completes (default: the
        checkpoint's model type), or a ``Task`` used as given. ``options`` are the fields of ``RuntimeOptions``."""
        layout = path if isinstance(path, Layout) else detect_layout(local_checkpoint(path))
        components = load_components(layout)
        if not isinstance(task, Task):
            name = task or task_for_model(next(iter(components.experts.values())).cfg.model_type).name
            task = checkpoint_task(layout, get_task(name))
        return cls(components, task, RuntimeOptions(**options))

    # --- transforms: how outside code changes the pipeline ---

    @property
    def experts(self) -> dict[str, nn.Module]:
        """The DiT experts by name (``high`` / ``low``, or ``dense``); a copy: change them with ``map_experts``."""
        return dict(self._placement.experts)

    def map_experts(self, fn: Callable[[str, nn.Module], nn.Module]) -> None:
        """Replace each expert by ``fn(name, expert)`` (a parallelism or another transform); the memory policy is
        applied again to what comes back."""
        self._placement.release()
        experts = {name: fn(name, model) for name, model in self._placement.experts.items()}
        self._placement = ExpertPlacement(experts, self.device, self.offload)

    def add_hook(self, hook: StepHook) -> None:
        """A step hook for every later call (e.g. ``runtime.cfg_parallel.CfgParallel``)."""
        self._hooks.append(hook)

    def remove_hook(self, hook: StepHook) -> None:
        self._hooks.remove(hook)

    def decode_over(self, group) -> None:
        """Decode each clip's tiles over the ranks of ``group`` (``runtime.vae_parallel``); None decodes alone."""
        self._decode_group = group

    # --- LoRAs (``pipelines.lora``, ``runtime.lora``) ---

    def load_lora(
        self,
        path: str | os.PathLike,
        strength: float = 1.0,
        expert: str | None = None,
        *,
        merge: bool = False,
        name: str | None = None,
    ) -> str:
        """Load a LoRA file (any dialect) on every expert, or on ``expert`` ("high" / "low"), or a folder of
        per-expert files each on its expert; returns its name. Beside the weights by default (strength changeable
        per call with ``set_lora_strength`` or per step with ``runtime.lora.LoraSchedule``, FP8 weights included);
        ``merge=True`` merges it into the weights (fastest; the originals are kept so unloading is exact)."""
        return lora.load_lora(self, path, strength, expert, merge=merge, name=name)

    def unload_lora(self, name: str | None = None) -> None:
        """Take LoRA ``name`` off (None: every LoRA); the weights come back bit for bit."""
        lora.unload_lora(self, name)

    def set_lora_strength(self, name: str, strength: float, expert: str | None = None) -> None:
        lora.set_lora_strength(self, name, strength, expert)

    @property
    def loras(self) -> list[dict[str, object]]:
        """The loaded LoRAs: name, strength per expert, merged or not."""
        return lora.describe_loaded(self._placement.experts)

    # --- generation ---

    @property
    def size_multiple(self) -> int:
        return self.vae.cfg.stride[1] * self.patch[1]

    def __call__(
        self,
        prompt: str | GenerateOptions,
        *,
        progress: Progress | None = None,
        callback: Callable[[Step], None] | None = None,
        hooks: Iterable[StepHook] = (),
        latents: torch.Tensor | None = None,
        **options,
    ) -> Video:
        """Generate one video. ``options`` are the fields of ``GenerateOptions`` (negative_prompt, image, size, frames,
        steps, shift, guide_scale, solver, seed), or ``prompt`` is a whole ``GenerateOptions``; ``callback(step)``
        after every step, ``hooks`` for this call only; ``latents`` replaces the seeded initial noise (for exact
        comparisons)."""
        if isinstance(prompt, GenerateOptions):
            if options:
                raise ValueError("pass a GenerateOptions or keyword options, not both")
            request = resolve(prompt, self.task, self.size_multiple)
        else:
            request = resolve(GenerateOptions.from_keywords(prompt, **options), self.task, self.size_multiple)
        progress = progress or Progress()
        hooks = [DenoiseProgress(progress), *hooks, *([Callback(callback)] if callback else [])]
        timings: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            prepared = self.task.prepare(self, request, self.encode_prompts(request, progress))
            timings["encode"] = time.perf_counter() - t0
            noise = self.noise(prepared.shape, request.seed) if latents is None else latents.to(self.device)
            t0 = time.perf_counter()
            out = self.sample(noise, prepared.cond, request, hooks)
            timings["denoise"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames = self.decode(out, progress)
            timings["decode"] = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return Video(frames, self.task.fps, request.seed, self.metadata(request), timings, peak)

    def encode_prompts(self, request: Request, progress: Progress) -> Conditioning:
        encoder = self.text_encoder
        if next(encoder.parameters()).device != self.t5_device:  # (FSDP-sharded weights are already in place)
            encoder.to(self.t5_device)
        texts = (request.prompt, request.negative_prompt)
        if set(request.guide_scale if isinstance(request.guide_scale, tuple) else (request.guide_scale,)) == {1.0}:
            texts = texts[:1]  # guidance 1 everywhere: no unconditional pass reads the negative prompt
        progress.start("text", len(texts))
        contexts = []
        for text in texts:  # two calls of batch 1, as the reference
            contexts.append(encoder.encode([text])[0])
            progress.advance("text")
        progress.end("text")
        if self.offload != "resident" and self.t5_device.type != "cpu":
            encoder.to("cpu")  # offload and FSDP exclude each other (parallelize_pipeline checks)
        dit = next(iter(self._placement.experts.values()))
        dtype = dit.text_embedding[0].weight.dtype
        cond, *null = (pad_context([c], dit.cfg.text_len).to(self.device, dtype) for c in contexts)
        return Conditioning(cond, null[0] if null else cond)

    def encode_image(self, video: torch.Tensor) -> torch.Tensor:
        """VAE latent of a conditioning clip (1, 3, F, H, W) in [-1, 1]."""
        return self.vae.encode(video.to(self.device, self.vae.dtype)).float()

    def noise(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        return initial_noise(shape, seed, self.device)

    def sample(
        self, noise: torch.Tensor, cond: Conditioning, request: Request, hooks: Iterable[StepHook] = ()
    ) -> torch.Tensor:
        """The shared loop with this pipeline's experts and hooks, then ``hooks``."""
        sampler = Sampler(
            get_schedule(request.solver, request.steps, request.shift, request.float_timesteps),
            get_solver(request.solver),
            boundary_timestep(self.task.boundary),
            request.guide_scale,
        )
        return denoise(self._placement, noise, cond, sampler, [self._placement, *self._hooks, *hooks])

    def decode(self, latents: torch.Tensor, progress: Progress) -> torch.Tensor:
        progress.start("decode", latents.shape[2])
        z, on_frame = latents.to(self.vae.dtype), lambda i: progress.advance("decode")
        if self._decode_group is not None:
            from wanflow.runtime.vae_parallel import decode_parallel

            video = decode_parallel(self.vae, z, self._decode_group, self.runtime.vae_tile, on_frame)
        elif self.runtime.vae_tile:
            video = decode_tiled(self.vae, z, self.runtime.vae_tile, on_frame)
        else:
            video = self.vae.decode(z, on_frame=on_frame)
        progress.end("decode")
        return video[0].float().cpu()

    def metadata(self, request: Request) -> dict[str, object]:
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "task": self.task.name,
            "steps": request.steps,
            "shift": request.shift,
            "guide_scale": request.guide_scale,
            "solver": request.solver,
            "frames": request.frames,
            "software": "wanflow",
            **({"float_timesteps": True} if request.float_timesteps else {}),
            **lora.lora_metadata(self._placement.experts),
        }


def checkpoint_task(layout: Layout, task: Task) -> Task:
    """The task's reference defaults, with the overrides a checkpoint stores in ``wanflow.json``."""
    _, overrides = layout.task_defaults()
    return task.with_overrides(overrides) if overrides else task


def is_hub_id(path: str | os.PathLike) -> bool:
    """``org/name`` that is not a local path: a Hugging Face Hub repository."""
    text = os.fspath(path)
    return not Path(text).expanduser().exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def local_checkpoint(path: str | os.PathLike) -> Path:
    """A local folder as is; a Hub repository id is fetched with huggingface_hub (or found in its cache)."""
    if not is_hub_id(path):
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(os.fspath(path)))
