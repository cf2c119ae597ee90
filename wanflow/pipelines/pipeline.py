"""``WanPipeline``: load a checkpoint once, then prompt (and image) in, frames out, for every Wan 2.2 task.

The stages: encode the prompts, let the task file build the latent shape and conditioning, draw the noise, run the
shared denoising loop, decode. Device placement and dtypes are policies chosen here, applied to plain models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wanflow.checkpoints.layouts import Layout
from wanflow.checkpoints.load import Components, load_components
from wanflow.configs import TASK_BY_MODEL_TYPE, TASKS, TaskSpec
from wanflow.io.video import save_video
from wanflow.models.dit import FP32_MODULES
from wanflow.models.text_encoder import pad_context
from wanflow.pipelines import i2v, t2v, ti2v
from wanflow.pipelines.core import Conditioning, Step, denoise
from wanflow.pipelines.progress import Progress
from wanflow.pipelines.request import Request, resolve
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.offload import ExpertPlacement
from wanflow.runtime.precision import cast_model
from wanflow.runtime.vae_parallel import decode_parallel
from wanflow.runtime.vae_tiling import decode_tiled
from wanflow.sampling.experts import boundary_timestep
from wanflow.sampling.schedule import get_schedule
from wanflow.sampling.solvers import get_solver

TASK_FILES = {"t2v": t2v.prepare, "i2v": i2v.prepare, "ti2v": ti2v.prepare}


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
        self,
        components: Components,
        task: TaskSpec | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload: str | None = None,
        t5_cpu: bool = False,
        fp8: bool = False,  # the experts' block linears stored as e4m3 + per-channel scales (runtime.fp8)
        compile: bool = False,  # torch.compile each DiT block (runtime.compile); traced at the first step
        vae_tile: int = 0,  # decode in spatial tiles of this many latent pixels (runtime.vae_tiling); 0 = whole
    ):
        if vae_tile < 0:
            raise ValueError(f"vae_tile is a tile size in latent pixels (0 = no tiling), got {vae_tile}")
        self.device = torch.device(device) if device is not None else default_device()
        dit_cfg = next(iter(components.experts.values())).cfg
        self.task = task_spec(components.layout, task or TASK_BY_MODEL_TYPE[dit_cfg.model_type])
        if self.task.model_type != dit_cfg.model_type:
            raise ValueError(
                f"task {self.task.name} needs a {self.task.model_type} model, but the checkpoint holds a "
                f"{dit_cfg.model_type} model"
            )
        if (self.task.boundary is not None) != components.layout.is_moe:
            raise ValueError(f"task {self.task.name} and the checkpoint disagree on the number of experts")
        self.patch = dit_cfg.patch_size
        compute = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        for model in components.experts.values():
            cast_model(model, compute, keep_fp32=FP32_MODULES)
            if fp8:
                quantize_fp8(model)  # after the cast, before the placement pins and moves the weights
            if compile:
                compile_blocks(model)
        self.vae = components.vae.to(self.device, dtype or torch.float32)
        self.text_encoder = components.text_encoder
        if dtype is not None:
            self.text_encoder.to(dtype)
        self.t5_device = torch.device("cpu") if t5_cpu else self.device
        policy = offload or ("model" if self.device.type == "cuda" else "resident")
        self.experts = ExpertPlacement(components.experts, self.device, policy)
        self.offload = policy != "resident"
        self.guidance = None  # replaces the guided-velocity step, e.g. runtime.cfg_parallel.CfgParallel
        self.vae_tile = vae_tile
        self.vae_group = None  # ranks that share the decode's tiles (runtime.vae_parallel), set by parallelize_pipeline

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, task: str | None = None, **kwargs) -> WanPipeline:
        """Load from a local folder in either layout, or a Hugging Face repo id (downloaded with huggingface_hub)."""
        spec = None if task is None else _task(task)
        return cls(load_components(_local(path)), spec, **kwargs)

    def __call__(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        image=None,
        size: tuple[int, int] | None = None,
        frames: int | None = None,
        steps: int | None = None,
        shift: float | None = None,
        guide_scale=None,
        solver: str = "unipc",
        seed: int | None = -1,
        batch_cfg: bool = True,
        progress: Progress | None = None,
        callback: Callable[[Step], None] | None = None,
        latents: torch.Tensor | None = None,
    ) -> Video:
        """Generate one video. ``latents`` replaces the seeded initial noise (for exact comparisons)."""
        request = resolve(
            self.task,
            self.vae.cfg.stride[1],
            self.patch[1],
            prompt,
            negative_prompt,
            image,
            size,
            frames,
            steps,
            shift,
            guide_scale,
            solver,
            seed,
        )
        progress = progress or Progress()
        timings: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            cond = self.encode_prompts(request, progress)
            prepared = TASK_FILES[self.task.model_type](self, request, cond)
            timings["encode"] = time.perf_counter() - t0
            noise = self.noise(prepared.shape, request.seed) if latents is None else latents.to(self.device)
            t0 = time.perf_counter()
            out = self.sample(noise, prepared.cond, request, progress, callback)
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
        progress.start("text", 2)
        contexts = []
        for text in (request.prompt, request.negative_prompt):  # two calls of batch 1, as the reference
            contexts.append(encoder.encode([text])[0])
            progress.advance("text")
        progress.end("text")
        if self.offload and self.t5_device.type != "cpu":
            encoder.to("cpu")  # offload and FSDP exclude each other (parallelize_pipeline checks)
        dit = next(iter(self.experts.experts.values()))
        dtype = dit.text_embedding[0].weight.dtype
        cond, null = (pad_context([c], dit.cfg.text_len).to(self.device, dtype) for c in contexts)
        return Conditioning(cond, null)

    def encode_image(self, video: torch.Tensor) -> torch.Tensor:
        """VAE latent of a conditioning clip (1, 3, F, H, W) in [-1, 1]."""
        return self.vae.encode(video.to(self.device, self.vae.dtype)).float()

    def noise(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        """One float32 randn of the full latent shape from a generator on the device, as the reference draws it."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=self.device)[None]

    def sample(
        self,
        noise: torch.Tensor,
        cond: Conditioning,
        request: Request,
        progress: Progress,
        callback: Callable[[Step], None] | None = None,
    ) -> torch.Tensor:
        schedule = get_schedule(request.solver, request.steps, request.shift)
        progress.start("denoise", request.steps)

        def on_step(step: Step) -> None:
            progress.advance("denoise", expert=step.expert)
            if callback is not None:
                callback(step)

        try:
            return denoise(
                self.experts,
                noise,
                cond,
                schedule,
                get_solver(request.solver),
                boundary_timestep(self.task.boundary),
                request.guide_scale,
                self.patch,
                callback=on_step,
                guidance=self.guidance,
                prefetch=self.experts.prefetch,
            )
        finally:
            self.experts.release()
            progress.end("denoise")

    def decode(self, latents: torch.Tensor, progress: Progress) -> torch.Tensor:
        progress.start("decode", latents.shape[2])
        z, on_frame = latents.to(self.vae.dtype), lambda i: progress.advance("decode")
        if self.vae_group is not None:
            video = decode_parallel(self.vae, z, self.vae_group, self.vae_tile, on_frame)
        elif self.vae_tile:
            video = decode_tiled(self.vae, z, self.vae_tile, on_frame)
        else:
            video = self.vae.decode(z, on_frame=on_frame)
        progress.end("decode")
        video = video[0].float()
        return video.cpu()

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
        }


def task_spec(layout: Layout, spec: TaskSpec) -> TaskSpec:
    """The task's reference defaults, with the overrides a checkpoint stores in ``wanflow.json``."""
    _, overrides = layout.task_defaults()
    return spec.with_overrides(overrides) if overrides else spec


def _task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def _local(path: str | os.PathLike) -> Path:
    """A local folder as is; ``org/name`` that is not a local folder is fetched from the Hugging Face Hub."""
    local = Path(path).expanduser()
    text = os.fspath(path)
    if local.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(text))
