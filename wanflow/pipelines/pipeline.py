"""``WanPipeline``: load a checkpoint once, then prompt (and image) in, frames out, for every Wan 2.2 task.

The stages: encode the prompts, let the task's conditioning file build the latent shape and inputs, draw the noise,
run the shared denoising loop, decode. How the models run (device, precision, memory policy, compilation) is a
``RuntimeOptions``, applied here to plain models; the transforms that come later (parallelism, hooks) go through the
pipeline's methods (``map_experts``, ``add_hook``, ``decode_over``; ``pipelines.parallel`` uses them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from wanflow.builtin import builtin_checkpoint
from wanflow.checkpoints.hub import HUB_OPTIONS, local_checkpoint
from wanflow.checkpoints.layouts import Layout, detect_layout, files_layout
from wanflow.checkpoints.load import Components, load_components
from wanflow.configs import LOW
from wanflow.io.video import save_video
from wanflow.models.attention import default_backend
from wanflow.models.dit import FP32_MODULES
from wanflow.models.rope import check_riflex
from wanflow.models.text_encoder import pad_context
from wanflow.pipelines import lora
from wanflow.pipelines.calls import CallLoras, loop_calls
from wanflow.pipelines.core import Call, Conditioning, Sampler, call_setting, denoise, step_levels
from wanflow.pipelines.diffusers_api import (
    DiffusersMethods,
    WanPipelineOutput,
    check_max_sequence_length,
    check_output_type,
    diffusers_hooks,
    diffusers_output,
    given_embeds,
)
from wanflow.pipelines.diffusers_batch import BatchNoise, batch_calls, batch_output
from wanflow.pipelines.diffusers_lora import DiffusersLoraMethods
from wanflow.pipelines.diffusers_parts import LoadParts, vae_methods, with_config
from wanflow.pipelines.guards import FiniteLatents, check_memory, memory_need
from wanflow.pipelines.long_video import decode_windows, sample_windows
from wanflow.pipelines.progress import Callback, DenoiseProgress, Progress, default_progress
from wanflow.pipelines.prompt_extension import extend_prompts
from wanflow.pipelines.request import DIFFUSERS_NAMES, WANFLOW_NAMES, GenerateOptions, Request, resolve, with_scheduler
from wanflow.pipelines.runtime_options import RuntimeOptions, check_device, device_and_dtype
from wanflow.pipelines.video_to_video import from_video, video_pixels
from wanflow.runtime.cache_curve import load_curve
from wanflow.runtime.cfg_parallel import CfgParallel
from wanflow.runtime.compile import compile_blocks
from wanflow.runtime.easycache import EasyCache, EasyCacheSettings
from wanflow.runtime.enhance_a_video import EnhanceAVideo, check_whole
from wanflow.runtime.fp8 import quantize_fp8
from wanflow.runtime.nag import Nag
from wanflow.runtime.offload import ExpertPlacement, choose_policy
from wanflow.runtime.precision import cast_model
from wanflow.runtime.preview import DEFAULT_EVERY, Preview, load_preview_map
from wanflow.runtime.riflex import Riflex
from wanflow.runtime.step_cache import CacheSettings, MagCache
from wanflow.runtime.vae_tiling import decode_tiled
from wanflow.sampling.comfy_schedules import scaled_noise
from wanflow.sampling.experts import boundary_timestep, step_boundary
from wanflow.sampling.hooks import Step, StepHook
from wanflow.sampling.noise import initial_noise
from wanflow.sampling.solvers import get_schedule, get_solver
from wanflow.tasks import Task, get_task, task_for_model

log = logging.getLogger(__name__)


@dataclass
class Video:
    """A generated video: (3, F, H, W) float32 frames in [-1, 1] and how they were made."""

    frames: torch.Tensor
    fps: int
    seed: int
    metadata: dict[str, object]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    peak_memory: int | None = None  # bytes on the device (CUDA only)

    def save(self, path: str | os.PathLike, before_replace: Callable[[], None] | None = None) -> Path:
        """The video file (``io.video.save_video``; ``before_replace`` runs just before its final rename)."""
        return save_video(self.frames, path, fps=self.fps, metadata=self.metadata, before_replace=before_replace)


class WanPipeline(DiffusersMethods, DiffusersLoraMethods):
    """One task's models, kept loaded between calls."""

    def __init__(
        self, components: Components, task: Task | None = None, runtime: RuntimeOptions | None = None, **options
    ):
        """``task``: the task with its final defaults (default: the checkpoint's model type, with the defaults its
        ``wanflow.json`` stores); ``runtime`` or ``options`` (its fields): how the models run."""
        runtime = runtime or RuntimeOptions.from_keywords(**options)
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
        self.dit_cfg = dit_cfg  # every expert's shape (one config for both experts of an A14B model)
        self.patch = dit_cfg.patch_size
        self.layout = components.layout  # where calibration files beside the weights are found
        self.runtime = runtime
        dtype = runtime.torch_dtype()
        self.vae = with_config(components.vae.to(self.device, runtime.vae_torch_dtype()))  # (diffusers' vae.config)
        vae_methods(self.vae, self)  # (and its tiling switches)
        self.text_encoder = components.text_encoder
        if dtype is not None:
            cast_model(self.text_encoder, dtype)  # (stored FP8 / GGUF weights keep their storage)
        self.t5_device = torch.device("cpu") if runtime.t5_cpu else self.device
        self.offload = choose_policy(runtime.offload, self.device)
        experts = {name: self._prepare_expert(model) for name, model in components.experts.items()}
        dit_dtype = runtime.dit_dtype(self.device)
        backend = default_backend(self.device.type, dit_dtype, dit_cfg.head_dim)
        log.info("%s on %s: DiT in %s, attention %s", self.task.name, self.device, dit_dtype, backend)
        self._placement = ExpertPlacement(experts, self.device, self.offload)
        self._hooks: list[StepHook] = []
        self._decode_group = None  # ranks that share the decode's tiles (``decode_over``)
        self._prompt_extender = None  # what rewrites prompts asked to be extended (``set_prompt_extender``)

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
        checkpoint's model type), or a ``Task`` used as given. ``options`` are the fields of ``RuntimeOptions``, or
        diffusers' ``torch_dtype`` for ``dtype``; for a repo id, huggingface_hub's ``revision``, ``token``,
        ``cache_dir`` and ``local_files_only``; diffusers' ``vae``, ``transformer``, ``transformer_2``,
        ``text_encoder``, ``tokenizer`` (modules in place of the checkpoint's), ``scheduler``, ``boundary_ratio`` and
        ``device_map`` (``diffusers_parts.LoadParts``)."""
        hub = {name: options.pop(name) for name in HUB_OPTIONS if name in options}
        parts = LoadParts.take(options)  # (checked before any weight is read, as the rest)
        runtime = RuntimeOptions.from_keywords(**options)
        if isinstance(path, Layout) and hub:
            raise ValueError(f"{sorted(hub)} apply to a Hugging Face Hub repository id, not to a Layout")
        layout = path if isinstance(path, Layout) else detect_layout(local_checkpoint(path, **hub))
        parts.check(layout)
        components = load_components(
            layout,
            vae=parts.vae,
            transformers=parts.transformers,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
        )
        if not isinstance(task, Task):
            name = task or task_for_model(next(iter(components.experts.values())).cfg.model_type).name
            task = checkpoint_task(layout, get_task(name))
        pipe = cls(components, parts.task(task), runtime)
        pipe.scheduler = parts.scheduler
        return pipe

    @classmethod
    def from_builtin(cls, task: str = "t2v-A14B", **options) -> WanPipeline:
        """The small model of ``task`` that ships with wanflow (``wanflow/builtin``; 64x64, 9 frames, CPU-sized), as
        ``wanflow generate`` uses it without ``--ckpt_dir``. ``options`` as ``from_pretrained``."""
        return cls.from_pretrained(builtin_checkpoint(task), task=task, **options)

    @classmethod
    def from_single_files(
        cls,
        dit: str | os.PathLike,
        dit_low: str | os.PathLike | None = None,
        vae: str | os.PathLike | None = None,
        t5: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        task: str | Task | None = None,
        base: str | os.PathLike | None = None,
        **options,
    ) -> WanPipeline:
        """Components as single files (safetensors in any float dtype or FP8, GGUF; ``dit_low`` for the A14B
        low-noise expert), the ones not given taken from the checkpoint folder ``base``; quantised weights stay
        quantised in memory. ``task`` and ``options`` as in ``from_pretrained``."""
        layout = files_layout(dit, dit_low, vae, t5, tokenizer, base=detect_layout(base) if base else None)
        return cls.from_pretrained(layout, task, **options)

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

    def set_prompt_extender(self, extender) -> None:
        """The model that rewrites a prompt when a request asks (``extend_prompt``): a ``prompts.extend`` extender
        (a local chat model, or DashScope), or None."""
        self._prompt_extender = extender

    def decode_over(self, group) -> None:
        """Decode each clip's tiles over the ranks of ``group`` (``runtime.vae_parallel``); None decodes alone."""
        self._decode_group = group

    def set_offload(self, policy: str | None) -> None:
        """Place the experts by memory policy ``policy`` (``runtime.offload.POLICIES``; None: the device's default)
        from the next call on; the text encoder follows it as at load (off the device between calls unless
        ``resident``)."""
        self.runtime = dataclasses.replace(self.runtime, offload=policy)  # (checks the name)
        self.offload = choose_policy(policy, self.device)
        self.map_experts(lambda name, expert: expert)

    def to(self, *args: torch.device | str | torch.dtype, **kwargs: torch.device | str | torch.dtype) -> WanPipeline:
        """Run on a device from now on (diffusers' ``pipe.to("cuda")``, ``pipe.to("cuda", torch.bfloat16)``,
        ``pipe.to(torch_device=...)``): the VAE moves now, the text encoder at its next use, the experts as the
        memory policy places them there. Dtypes are chosen at load (``torch_dtype``): a dtype here must be the DiT's."""
        device, dtype = device_and_dtype(args, kwargs)
        if dtype is not None and dtype != self.runtime.dit_dtype(self.device):
            raise ValueError(
                f"the pipeline runs in {self.runtime.dit_dtype(self.device)}; dtypes are chosen at load: "
                f"from_pretrained(..., torch_dtype={dtype})"
            )
        if device is None:
            return self
        self.device = check_device(device)  # (one line that says what to use, not torch's assertion)
        self.runtime = dataclasses.replace(self.runtime, device=self.device)
        self.vae.to(self.device)
        self.t5_device = torch.device("cpu") if self.runtime.t5_cpu else self.device
        self.set_offload(self.runtime.offload)
        return self

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
        prompt: str | GenerateOptions | None = None,
        /,
        *,
        progress: Progress | None = None,
        callback: Callable[[Step], None] | None = None,
        hooks: Iterable[StepHook] = (),
        latents: torch.Tensor | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Iterable[str] = ("latents",),
        attention_kwargs: dict | None = None,
        max_sequence_length: int | None = None,
        **options,
    ) -> Video | WanPipelineOutput | tuple:
        """Generate one video. ``options`` are the fields of ``GenerateOptions`` (negative_prompt, image, size, frames,
        steps, shift, guide_scale, solver, seed) or diffusers' names for them (``request.DIFFUSERS_NAMES``: height,
        width, num_frames, num_inference_steps, guidance_scale, guidance_scale_2, generator), or ``prompt`` is a whole
        ``GenerateOptions``; ``progress``: default bars on stderr when it is a terminal, none otherwise;
        ``callback(step)`` after every step, ``hooks`` for this call only; ``latents`` replaces the seeded initial
        noise (for exact comparisons).

        Returns a ``Video``; a call that uses diffusers' names or arguments (``output_type``, ``return_dict=False``,
        ``prompt=`` with no option of wanflow's own names (``WANFLOW_NAMES``),
        ``prompt_embeds`` / ``negative_prompt_embeds`` in place of the texts, ``callback_on_step_end``,
        ``attention_kwargs``, ``max_sequence_length``: docs/python-api.md) returns what diffusers' ``WanPipeline``
        does: ``WanPipelineOutput`` with ``frames`` as ``output_type`` asks (default "np": (1, F, H, W, 3) in [0, 1];
        "latent": the latents, undecoded), or the tuple ``(frames,)``."""
        embeds = (prompt_embeds, negative_prompt_embeds)
        named = options.pop("prompt", None)  # ``prompt=...``: diffusers' way to pass it, wanflow's is positional
        if named is not None and prompt is not None:
            raise ValueError("the prompt is given twice, as the first argument and as prompt=")
        prompt = named if named is not None else prompt
        diffusers_call = (
            (isinstance(named, (str, list)) and set(options).isdisjoint(WANFLOW_NAMES))  # diffusers' bare call
            or output_type is not None
            or not return_dict
            or callback_on_step_end is not None
            or attention_kwargs is not None
            or max_sequence_length is not None
            or any(e is not None for e in embeds)
            or not set(options).isdisjoint(DIFFUSERS_NAMES)
        )
        output_type = output_type or "np"
        check_output_type(output_type)
        calls = batch_calls(prompt, options, latents, embeds) if diffusers_call else None
        if calls is not None:  # diffusers' batch: one call per video, the frames stacked
            if callback_on_step_end is not None:
                raise ValueError("a batch takes no callback_on_step_end: one call per video")
            if isinstance(prompt, list) and any(e is not None for e in embeds):
                raise ValueError("pass prompts or prompt_embeds, not both")
            hooks = list(hooks)
            same = dict(progress=progress, callback=callback, hooks=hooks, output_type=output_type)
            same.update(attention_kwargs=attention_kwargs, max_sequence_length=max_sequence_length)
            frames = [self(text, **same, **item).frames for text, item in calls]
            return batch_output(frames, output_type, return_dict, calls[0][1].get("seed"))
        check_max_sequence_length(max_sequence_length, self.dit_cfg.text_len)
        request = self._request(prompt, embeds, options)
        given = given_embeds(request, embeds, self.dit_cfg)
        if request.windows is not None and (output_type == "latent" or callback_on_step_end is not None):
            raise ValueError("output_type='latent' and callback_on_step_end take a one-window video (no window_frames)")
        self.check_memory(request)
        progress = progress or default_progress(self._progress_bar_config)
        hooks = [DenoiseProgress(progress), *hooks, *([Callback(callback)] if callback else [])]
        hooks += diffusers_hooks(self, attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        if output_type == "latent":
            with torch.inference_mode():
                request = extend_prompts(request, self._prompt_extender, progress, {})
                out = self.denoised(request, progress, hooks, latents, {}, given)
            return diffusers_output(out, output_type, return_dict, request.seed)
        video = self.generate(request, progress, hooks, latents, given)
        if not diffusers_call:
            return video
        return diffusers_output(video.frames, output_type, return_dict, video.seed)

    def _request(self, prompt: str | GenerateOptions | None, embeds: tuple[object, object], options: dict) -> Request:
        """The resolved request of a call; with ``prompt_embeds`` in place of the prompt, its text is "" (diffusers
        takes one or the other, and the same for the negative prompt)."""
        if isinstance(prompt, GenerateOptions) and options:
            raise ValueError("pass a GenerateOptions or keyword options, not both")
        if (prompt is None) == (embeds[0] is None):
            raise ValueError("pass a prompt or prompt_embeds (one of the two)")
        if options.get("negative_prompt") is not None and embeds[1] is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds (one of the two)")
        if not isinstance(prompt, GenerateOptions):
            prompt = GenerateOptions.from_keywords(prompt or "", **options)
        request = self.check_request(resolve(prompt, self.task, self.size_multiple))
        return request if self._scheduler is None else with_scheduler(request, prompt, self._scheduler)

    def check_request(self, request: Request) -> Request:
        """What ``resolve`` cannot check without this model: skip layer guidance's blocks and RIFLEx's frequency
        exist."""
        slg = request.guidance.slg
        if slg is not None and max(slg.layers) >= self.dit_cfg.num_layers:
            raise ValueError(f"slg_layers {list(slg.layers)}: this DiT has blocks 0..{self.dit_cfg.num_layers - 1}")
        check_riflex(request.riflex, self.dit_cfg.head_dim)
        if any(isinstance(h, CfgParallel) for h in self._hooks):
            check_one_pass_a_rank(request)
        if request.enhance_a_video:
            for expert in self._placement.experts.values():
                check_whole(expert)
        return request

    def generate(
        self,
        request: Request,
        progress: Progress,
        hooks: Iterable[StepHook],
        latents: torch.Tensor | None = None,
        embeds: tuple[torch.Tensor | None, ...] = (None, None),
    ) -> Video:
        """The stages of one resolved request: encode, condition, noise, denoise (with ``hooks``), decode; ``embeds``:
        the (prompt, negative prompt) states to use in place of encoding the texts, where not None."""
        timings: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            request = extend_prompts(request, self._prompt_extender, progress, timings)
            if request.windows is None:
                out = self.denoised(request, progress, hooks, latents, timings, embeds)
                t0 = time.perf_counter()
                frames = self.decode(out, progress)
            else:  # a longer video: window after window (``pipelines.long_video``)
                windows = sample_windows(self, request, progress, hooks, latents, timings)
                t0 = time.perf_counter()
                frames = decode_windows(self, windows, progress, request.windows.anchor)
            timings["decode"] = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return Video(frames, self.task.fps, request.seed, self.metadata(request), timings, peak)

    def denoised(
        self,
        request: Request,
        progress: Progress,
        hooks: Iterable[StepHook],
        latents: torch.Tensor | None,
        timings: dict[str, float],
        embeds: tuple[torch.Tensor | None, ...] = (None, None),
    ) -> torch.Tensor:
        """The latents of a one-window request: encode, condition, noise, denoise."""
        if latents is not None and request.video is not None:
            raise ValueError("latents= replaces the noise; with video= the run starts from the video: pass one of them")
        t0 = time.perf_counter()
        prepared = self.task.prepare(self, request, self.encode_prompts(request, progress, embeds))
        start = None if request.video is None else self.encode_video(request.video, prepared.shape)
        timings["encode"] = time.perf_counter() - t0
        noise = (
            self.noise(prepared.shape, request.seed, request.noise_device)
            if latents is None
            else self.given_latents(latents, prepared.shape)
        )
        t0 = time.perf_counter()
        out = self.sample(noise, prepared.cond, request, hooks, start)
        timings["denoise"] = time.perf_counter() - t0
        return out

    def given_latents(self, latents: object, shape: tuple[int, ...]) -> torch.Tensor:
        """``latents=`` in place of the seeded noise: (1, C, T, H, W) of this request's size and frames, on the
        device."""
        if isinstance(latents, BatchNoise):  # (a video of diffusers' batch)
            return latents.draw(shape, self.device)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise ValueError(f"latents must be a float tensor of (1, *{shape}), got {type(latents).__name__}")
        if tuple(latents.shape) != (1, *shape):
            raise ValueError(
                f"latents of {tuple(latents.shape)} do not fit this request: its noise is {(1, *shape)} (channels, "
                "latent frames, height and width of the size and frames asked for)"
            )
        return latents.to(self.device)

    def check_memory(self, request: Request) -> None:
        """Refuse, in one line, a request that cannot fit in the memory free now (``pipelines.guards``); a distributed
        run's share of the work is not estimated."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return
        scales = request.scales
        need = memory_need(
            self.dit_cfg,
            self.vae.cfg,
            request.size,
            request.frames,
            batch=1 if all(g == 1.0 for g in scales) else 2,
            dit_bytes=self.runtime.dit_dtype(self.device).itemsize,
            vae_bytes=self.vae.dtype.itemsize,
            vae_tile=self.runtime.vae_tile,
            pending_weights=self._pending_weights(),
            dit_frames=request.window_frames,  # (a longer video is denoised window by window, decoded whole)
        )
        check_memory(need, self.device)

    def _pending_weights(self) -> int:
        """Bytes the ``model`` policy has yet to bring onto the device: the largest expert, less the experts there now
        (dropped when it comes, so the free memory does not count them)."""
        if self.offload != "model":
            return 0
        sizes = [sum(p.nbytes for p in m.parameters()) for m in self._placement.experts.values()]
        here = sum(p.nbytes for m in self._placement.experts.values() for p in m.parameters() if self._on_device(p))
        return max(max(sizes) - here, 0)

    def _on_device(self, tensor: torch.Tensor) -> bool:
        d = tensor.device
        return d.type == self.device.type and (self.device.index is None or d.index == self.device.index)

    def encode_prompts(
        self, request: Request, progress: Progress, given: tuple[torch.Tensor | None, ...] = (None, None)
    ) -> Conditioning:
        """The (prompt, negative prompt) states the DiT reads, padded to its ``text_len``, and NAG's negative states
        where it is on (by default the run's negative prompt's, encoded or given, computed once); ``given`` states
        (L, dim) take the place of encoding the text where not None (diffusers' ``prompt_embeds``)."""
        guided = set(request.scales) != {1.0}  # guidance 1 everywhere: no unconditional pass reads the negative prompt
        texts, given = [request.prompt, request.negative_prompt], [*given, None][:2]
        nag = request.nag
        nag_text = None if nag is None else nag.negative_prompt
        shared = nag is not None and (nag_text is None or (nag_text == texts[1] and given[1] is None))
        if not guided:  # the negative's pass is NAG's own, or there is none
            texts, given = (texts, given) if shared else (texts[:1], given[:1])
        if nag is not None and not shared:
            texts, given = [*texts, nag_text], [*given, None]
        states = self.prompt_states(texts, given, progress)
        null = states[1] if guided else states[0]
        return Conditioning(states[0], null, context_nag=None if nag is None else states[1 if shared else -1])

    def prompt_states(
        self, texts: Sequence[str], given: Sequence[torch.Tensor | None], progress: Progress
    ) -> list[torch.Tensor]:
        """(1, text_len, dim) states of each text in the DiT's dtype on the device, or of its ``given`` (L, dim)
        states where not None; one encoder call of batch 1 per text, as the reference."""
        todo = [text for text, states in zip(texts, given, strict=True) if states is None]
        encoder = self.text_encoder
        if todo and next(encoder.parameters()).device != self.t5_device:  # (FSDP-sharded weights are in place)
            encoder.to(self.t5_device)
        progress.start("text", len(todo))
        contexts = []
        for text, states in zip(texts, given, strict=True):
            if states is None:
                states = encoder.encode([text])[0]
                progress.advance("text")
            contexts.append(states)
        progress.end("text")
        if todo and self.offload != "resident" and self.t5_device.type != "cpu":
            encoder.to("cpu")  # offload and FSDP exclude each other (parallelize_pipeline checks)
        dtype = next(iter(self._placement.experts.values())).text_embedding[0].weight.dtype
        return [pad_context([c], self.dit_cfg.text_len).to(self.device, dtype) for c in contexts]

    def encode_image(self, video: torch.Tensor) -> torch.Tensor:
        """VAE latent of a conditioning clip (1, 3, F, H, W) in [-1, 1]."""
        return self.vae.encode(video.to(self.device, self.vae.dtype)).float()

    def video_pixels(self, video: list[Image.Image], shape: tuple[int, ...]) -> torch.Tensor:
        """(1, 3, F, H, W) pixels of a given video's frames, sized to latents of ``shape`` (..., H', W')."""
        _, s, _ = self.vae.cfg.stride
        return video_pixels(video, shape[-1] * s, shape[-2] * s)

    def encode_video(self, video: list[Image.Image], shape: tuple[int, ...]) -> torch.Tensor:
        """The latents (1, C, T, H, W) of a given video's frames, sized to latents of ``shape`` (..., H', W')."""
        return self.encode_image(self.video_pixels(video, shape))

    def noise(self, shape: tuple[int, ...], seed: int, on: str | None = None) -> torch.Tensor:
        """The initial noise on this pipeline's device (``on="cpu"``: drawn on the CPU, ``sampling.noise``)."""
        return initial_noise(shape, seed, self.device, on)

    def sample(
        self,
        noise: torch.Tensor,
        cond: Conditioning,
        request: Request,
        hooks: Iterable[StepHook] = (),
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The shared loop with this pipeline's experts and hooks, then ``hooks``; from the latents ``start`` of a
        video noised to the step its strength starts at (``pipelines.video_to_video``), where given."""
        schedule = (
            request.grid.schedule  # a diffusers scheduler's grid (``pipe.scheduler``), or the solver's own
            if request.grid is not None
            else get_schedule(request.solver, request.steps, request.shift, request.float_timesteps)
        )
        solver, guidance = get_solver(request.solver), request.guidance
        low_shift = request.low_noise_shift
        low = loop_calls(None, request.switch_step, None, request.low_schedule, False, low_shift)  # (its own steps)
        boundary = (  # the task's switch between experts, or after the first ``switch_step`` steps
            boundary_timestep(self.task.boundary)
            if request.switch_step is None
            else step_boundary(step_levels(schedule, low)[0], request.switch_step)
        )
        skipped = 0
        if start is not None:
            tail, noise = from_video(schedule, request.strength, start, noise)
            schedule, skipped = tail, schedule.num_steps - tail.num_steps
        elif request.grid is not None and request.grid.comfy:
            noise = scaled_noise(schedule, noise)
        sampler = Sampler(
            schedule, solver, boundary, request.guide_scale, skipped=skipped, guidance=guidance, seed=request.seed,
            calls=low, shift=request.shift,
        )  # fmt: skip
        switch = next((s.index for s in sampler.steps() if s.expert == LOW), None)  # (the loop's own expert rule)
        calls = loop_calls(
            request.calls, switch, request.low_noise_seed, request.low_schedule, solver.noised, low_shift
        )
        sampler = dataclasses.replace(sampler, calls=calls)
        hooks = [self._placement, FiniteLatents(), *self._hooks, *hooks]  # NaN weights: an error, not a black video
        hooks += self.request_hooks(request, calls, switch)
        return denoise(self._placement, noise, cond, sampler, hooks)

    def request_hooks(self, request: Request, calls: Sequence[Call], switch: int | None) -> list[StepHook]:
        """The step hooks the request's options make (the loop's ``calls``, the step the experts switch at)."""
        hooks: list[StepHook] = []
        if request.calls is not None and request.calls.loras:
            hooks.append(CallLoras(request.calls, switch, self._placement.experts))
        if isinstance(request.cache, EasyCacheSettings):
            shift_of = lambda n: call_setting(calls, n, "shift", request.shift)  # noqa: E731
            hooks.append(EasyCache(request.cache, shift_of, uncond=get_solver(request.solver).uncond))
        elif request.cache:
            hooks.append(self.step_cache(request.cache))
        if request.nag:
            hooks.append(Nag(request.nag))
        if request.riflex:
            hooks.append(Riflex(request.riflex))
        if request.enhance_a_video:
            hooks.append(EnhanceAVideo(request.enhance_a_video))
        return hooks

    def step_cache(self, settings: CacheSettings) -> MagCache:
        """A step cache for one call, with the calibration of this checkpoint (``runtime.cache_curve.load_curve``)."""
        return MagCache(load_curve(self.layout.root, self.task.name), settings)

    def preview(self, show: Callable[[Image.Image, Step], None], every: int = DEFAULT_EVERY) -> Preview:
        """A live-preview hook for one call: ``show(image, step)`` every ``every`` steps, the picture at the video's
        size (``runtime.preview``)."""
        cfg = self.vae.cfg
        return Preview(load_preview_map(self.layout.root, cfg.version, cfg.z_dim), show, cfg.stride[1], every)

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
            **({"cache": str(request.cache)} if request.cache else {}),
            "software": "wanflow",
            **({"float_timesteps": True} if request.float_timesteps else {}),
            **request.metadata(),
            **lora.lora_metadata(self._placement.experts),
        }


# diffusers' names for its image- and video-to-video pipeline classes and for the class that picks the pipeline of a
# checkpoint: here one class runs every task (the checkpoint says which; video to video is an option of each), so the
# Hub's "use this model" snippets and diffusers' examples run as written
WanImageToVideoPipeline = WanVideoToVideoPipeline = DiffusionPipeline = WanPipeline


def check_one_pass_a_rank(request: Request) -> None:
    """What CFG parallelism (each rank one of the two passes) cannot run as one process does."""
    if get_solver(request.solver).uncond:
        raise ValueError(f"{request.solver} reads the unconditional pass on every rank: not with CFG parallelism")
    if isinstance(request.cache, EasyCacheSettings):
        raise ValueError("easycache decides from the unconditional pass on every rank: not with CFG parallelism")
    if request.enhance_a_video:
        raise ValueError("Enhance-A-Video's number is the CFG batch's (both passes): not with CFG parallelism")


def checkpoint_task(layout: Layout, task: Task) -> Task:
    """The task's reference defaults, with the overrides a checkpoint stores in ``wanflow.json``."""
    _, overrides = layout.task_defaults()
    return task.with_overrides(overrides) if overrides else task
