"""What a diffusers user gets back and hooks into: ``WanPipelineOutput.frames`` in diffusers' shapes,
``export_to_video``, ``callback_on_step_end`` (with ``interrupt``) and ``prompt_embeds``.

diffusers' ``WanPipeline`` returns ``output.frames`` as (batch, frames, height, width, 3) float32 in [0, 1] for
``output_type="np"`` (its default), (batch, frames, 3, height, width) in [0, 1] for ``"pt"``, one list of PIL
images per video for ``"pil"``, and the denoised latents (batch, channels, latent frames, height', width'), undecoded,
for ``"latent"``; wanflow returns the same for a call in diffusers' names (a batch: ``diffusers_batch``). The input
names are mapped in one place, ``pipelines.request.from_diffusers_names``; the components as diffusers has them
(``pipe.transformer``, ``pipe.vae``, ``from_pretrained``'s modules) are ``diffusers_parts``; the whole
correspondence is in docs/python-api.md.

Pixels: ``x * 0.5 + 0.5`` clamped to [0, 1] is exactly ``(clamp(x, -1, 1) + 1) / 2`` in float32 (both only scale by
powers of two around one rounding), so ``export_to_video`` of "np" or "pt" frames writes the very pixels that
``Video.save`` writes (255 x, truncated, as the reference). "pil" rounds to the nearest level, as diffusers does.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanflow.configs import DENSE, HIGH, LOW
from wanflow.io.video import save_video
from wanflow.pipelines.diffusers_parts import VAE_TILE, shard_bytes, with_config
from wanflow.pipelines.progress import Progress
from wanflow.runtime.lora import LoraScale
from wanflow.sampling.diffusers_schedulers import ReferenceScheduler, scheduler_family
from wanflow.sampling.hooks import Step, StepHook, Velocity

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent")  # diffusers' names; its default is "np"
CALLBACK_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds")  # diffusers' ``_callback_tensor_inputs``


@dataclass
class WanPipelineOutput:
    """diffusers' output of a Wan pipeline: ``frames`` of one video in the shape ``output_type`` asks for."""

    frames: Any  # np.ndarray (1, F, H, W, 3) | torch.Tensor (1, F, 3, H, W) | list[list[PIL.Image.Image]]
    seed: int | None = None  # wanflow's addition: the seed the noise was drawn from


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; choose one of {list(OUTPUT_TYPES)} (diffusers' names)")


def postprocess(video: torch.Tensor, output_type: str = "np") -> Any:
    """(3, F, H, W) float in [-1, 1] -> one video's frames as diffusers' ``postprocess_video`` returns them; for
    "latent", ``video`` is the (1, C, T', H', W') latents and comes back as it is."""
    check_output_type(output_type)
    if output_type == "latent":
        return video
    frames = (video.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)  # (F, 3, H, W)
    if output_type == "pt":
        return frames[None]
    array = frames.permute(0, 2, 3, 1).numpy()  # (F, H, W, 3)
    if output_type == "np":
        return array[None]
    from PIL import Image

    return [[Image.fromarray(level) for level in (array * 255).round().astype(np.uint8)]]


def diffusers_output(video: torch.Tensor, output_type: str, return_dict: bool, seed: int | None) -> Any:
    frames = postprocess(video, output_type)
    return WanPipelineOutput(frames, seed) if return_dict else (frames,)


class DiffusersMethods:
    """diffusers' pipeline methods and call state on ``WanPipeline`` (the mixin needs its ``to``, ``set_offload``,
    ``prompt_states``, ``experts``, ``task`` and ``device``). What a ``callback_on_step_end`` sees of the running call:
    ``num_timesteps``, ``current_timestep``, and ``interrupt``, which a callback sets with ``pipe._interrupt = True``
    to end the denoising after this step (the latents so far are decoded, as in diffusers)."""

    _interrupt = False
    _num_timesteps: int | None = None
    _current_timestep: torch.Tensor | None = None
    _progress_bar_config: dict[str, object] | None = None  # ``set_progress_bar_config``'s tqdm keywords

    _scheduler: Any = None  # a diffusers scheduler set as ``pipe.scheduler``; None: the reference's sampler

    @property
    def scheduler(self) -> Any:
        """diffusers' ``pipe.scheduler``: the scheduler set, or the reference's (``ReferenceScheduler``), whose
        ``config`` builds diffusers' schedulers (``UniPCMultistepScheduler.from_config(pipe.scheduler.config,
        flow_shift=5.0)``)."""
        return self._scheduler if self._scheduler is not None else ReferenceScheduler(self.task.shift)  # type: ignore[attr-defined]

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        """Set a diffusers scheduler (UniPC, DPM++ or flow-matching Euler, in the settings wanflow's solvers compute:
        ``sampling.diffusers_schedulers``): every call walks its grid with its family's solver, as diffusers would.
        None or the reference's (what ``pipe.scheduler`` read before) goes back to wanflow's own sampler."""
        if scheduler is not None and not isinstance(scheduler, ReferenceScheduler):
            scheduler_family(scheduler)  # refused here, not at the next call
            self._scheduler = scheduler
        else:
            self._scheduler = None

    @property
    def transformer(self) -> torch.nn.Module:
        """diffusers' ``pipe.transformer``: the high-noise expert (TI2V-5B's one model), its settings in diffusers'
        names as ``.config`` (``pipe.transformer.config.patch_size``). To change an expert: ``map_experts``."""
        experts = self.experts  # type: ignore[attr-defined]
        return with_config(experts[HIGH if HIGH in experts else DENSE])

    @property
    def transformer_2(self) -> torch.nn.Module | None:
        """diffusers' ``pipe.transformer_2``: the low-noise expert of an A14B model, None for TI2V-5B."""
        low = self.experts.get(LOW)  # type: ignore[attr-defined]
        return None if low is None else with_config(low)

    @property
    def vae_scale_factor_spatial(self) -> int:
        return self.vae.cfg.stride[1]  # type: ignore[attr-defined]

    @property
    def vae_scale_factor_temporal(self) -> int:
        return self.vae.cfg.stride[0]  # type: ignore[attr-defined]

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def num_timesteps(self) -> int | None:
        return self._num_timesteps

    @property
    def current_timestep(self) -> torch.Tensor | None:
        return self._current_timestep

    def set_progress_bar_config(self, **kwargs: object) -> None:
        """diffusers' way to configure (``disable=True``: silence) the bars of the calls without ``progress=``;
        ``kwargs`` are tqdm's (``progress.default_progress``)."""
        from tqdm import tqdm

        allowed = set(inspect.signature(tqdm.__init__).parameters) - {"self", "total"}  # (the total is the stage's)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"set_progress_bar_config takes tqdm's arguments; unknown: {unknown}")
        self._progress_bar_config = dict(kwargs)

    def enable_vae_tiling(self, tile: int = VAE_TILE) -> None:
        """diffusers' (older) name for a tiled VAE decode: here exact (``runtime.vae_tiling``: no blending, no seams),
        in tiles of ``tile`` latent pixels; the ``vae_tile`` runtime option."""
        self.runtime = dataclasses.replace(self.runtime, vae_tile=tile)  # type: ignore[attr-defined]

    def disable_vae_tiling(self) -> None:
        self.runtime = dataclasses.replace(self.runtime, vae_tile=0)  # type: ignore[attr-defined]

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """diffusers' name for the ``model`` policy: only the active expert on the device. ``device`` (or ``gpu_id``,
        meaning ``cuda:N``) moves the run there first."""
        self._offload("model", gpu_id, device)

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """diffusers' name for the ``block`` policy: the experts' blocks wait in pinned host memory and are streamed
        to the device one after another, the next one copied in while the current one runs."""
        self._offload("block", gpu_id, device)

    def _offload(self, policy: str, gpu_id: int | None, device: torch.device | str | None) -> None:
        if device is not None or gpu_id is not None:
            self.to(device if device is not None else f"cuda:{gpu_id}")  # type: ignore[attr-defined]
        self.set_offload(policy)  # type: ignore[attr-defined]

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        layout: str = "diffusers",
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
    ) -> Path:
        """diffusers' ``save_pretrained``: the models as they are now, as a new checkpoint folder in diffusers' layout
        (which diffusers and wanflow read; with the scheduler set as ``pipe.scheduler``, for diffusers) or
        ``layout="official"``, with the task's sampling defaults (``checkpoints.save``). LoRAs merged into the
        weights are in them (the fuse-then-unload way to a checkpoint with a LoRA built in); quantised layers are
        written as the float weights they compute with. Returns the folder."""
        from wanflow.checkpoints.load import Components
        from wanflow.checkpoints.merge import merged_record
        from wanflow.checkpoints.save import save_checkpoint, write_scheduler
        from wanflow.runtime.lora import loaded_loras

        if not safe_serialization and layout == "diffusers":
            raise ValueError("diffusers' layout is written as safetensors (safe_serialization=True)")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError("save_pretrained writes whole models: call it in a single process, not under torchrun")
        experts = self.experts  # type: ignore[attr-defined]
        beside = sorted({a.name for m in experts.values() for a in loaded_loras(m) if not a.merged})
        if beside:
            raise ValueError(
                f"LoRAs {beside} run beside the weights, not in them: fuse them first (fuse_lora, then "
                "unload_lora_weights; or load_lora(..., merge=True)), or unload them"
            )
        parts = Components(self.layout, experts, self.vae, self.text_encoder)  # type: ignore[attr-defined]
        recorded = merged_record(self.layout.root)  # type: ignore[attr-defined]
        merged = {name: [*recorded.get(name, []), *merged_loras(model)] for name, model in experts.items()}
        saved = save_checkpoint(parts, self.task, save_directory, layout, shard_bytes(max_shard_size), merged)  # type: ignore[attr-defined]
        if layout == "diffusers" and self._scheduler is not None and not write_scheduler(saved.root, self._scheduler):
            log.warning(
                "pipe.scheduler (%s) is not written: diffusers has no class by that name; the folder has the "
                "reference's UniPC",
                type(self._scheduler).__name__,
            )
        return saved.root

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """diffusers' ``encode_prompt``: ``(prompt_embeds, negative_prompt_embeds)``, each (1, text_len, dim) as the
        DiT reads them (the negative one None without guidance), ready for ``pipe(prompt_embeds=...)``. As in every
        wanflow call, a negative prompt left out is the task's (diffusers': none)."""
        cfg = self.dit_cfg  # type: ignore[attr-defined]
        texts = [one_prompt(prompt, "prompt"), one_prompt(negative_prompt, "negative_prompt")]
        if texts[1] is None:
            texts[1] = self.task.negative_prompt  # type: ignore[attr-defined]
        if num_videos_per_prompt != 1:
            raise ValueError(
                "encode_prompt gives one prompt's states: num_videos_per_prompt must be 1 (a batch of videos: "
                "pipe(prompt=..., num_videos_per_prompt=n))"
            )
        check_max_sequence_length(max_sequence_length, cfg.text_len)
        given = embeds_states((prompt_embeds, negative_prompt_embeds), cfg)
        if texts[0] is None and given[0] is None:
            raise ValueError("pass a prompt or prompt_embeds")
        n = 2 if do_classifier_free_guidance else 1
        with torch.inference_mode():
            states = self.prompt_states(texts[:n], given[:n], Progress())
        states = [s.to(device or self.device, dtype or s.dtype) for s in states]
        return states[0], states[1] if n == 2 else None


def merged_loras(model: torch.nn.Module) -> list[str]:
    """The LoRAs merged or fused into an expert's weights since it was loaded, as "name:strength"."""
    from wanflow.runtime.lora import baked_loras, loaded_loras

    now = [(a.name, a.strength) for a in loaded_loras(model) if a.merged] + list(baked_loras(model).items())
    return [f"{name}:{strength:g}" for name, strength in now]


def check_tensor_inputs(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in names if name not in CALLBACK_TENSORS]
    if unknown:
        allowed = list(CALLBACK_TENSORS)
        raise ValueError(f"callback_on_step_end_tensor_inputs has to be in {allowed}, but found {unknown}")
    return tuple(names)


def embeds_context(embeds: Any, name: str, text_len: int, text_dim: int) -> torch.Tensor:
    """diffusers' ``prompt_embeds`` (1, L, text_dim) or (L, text_dim), L <= text_len (diffusers' are zero-padded to
    512 tokens, the reference's ``text_len``) -> (L, text_dim), with a clear error for anything else."""
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of (1, tokens, {text_dim}), got {type(embeds).__name__}")
    if embeds.ndim == 3 and embeds.shape[0] == 1:
        embeds = embeds[0]
    if embeds.ndim != 2 or embeds.shape[1] != text_dim or not 0 < embeds.shape[0] <= text_len:
        batch = " (rows of prompt_embeds are a batch of prompts, as many negative ones)" if embeds.ndim == 3 else ""
        raise ValueError(
            f"{name} must be (1, tokens, {text_dim}) with 1..{text_len} tokens, got {tuple(embeds.shape)}{batch}"
        )
    if not torch.isfinite(embeds).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return embeds


def one_prompt(prompt: Any, name: str) -> str | None:
    """A prompt of diffusers' ``encode_prompt``: a string, a list of one, or None."""
    if isinstance(prompt, (list, tuple)):
        if len(prompt) != 1:
            raise ValueError(f"{name}: encode_prompt takes one prompt per call, got {len(prompt)}")
        prompt = prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{name} must be a string, got {type(prompt).__name__}")
    return prompt


def check_max_sequence_length(max_sequence_length: int | None, text_len: int) -> None:
    if max_sequence_length not in (None, text_len):
        raise ValueError(
            f"max_sequence_length={max_sequence_length}: the DiT reads {text_len} rows of text states (zero rows "
            "after the prompt's tokens, as the reference); another padding length would change the result"
        )


def embeds_states(embeds: tuple[Any, Any], cfg: Any) -> tuple[torch.Tensor | None, ...]:
    """diffusers' (``prompt_embeds``, ``negative_prompt_embeds``) checked against the DiT's ``cfg``: (L, text_dim)
    each, or None (that text is encoded)."""
    names = ("prompt_embeds", "negative_prompt_embeds")
    return tuple(
        None if e is None else embeds_context(e, name, cfg.text_len, cfg.text_dim)
        for e, name in zip(embeds, names, strict=True)
    )


def given_embeds(request: Any, embeds: tuple[Any, Any], cfg: Any) -> tuple[torch.Tensor | None, ...]:
    """A call's ``prompt_embeds`` / ``negative_prompt_embeds`` (``embeds_states``), which take one prompt's place."""
    if any(e is not None for e in embeds) and (request.windows is not None or request.extension is not None):
        raise ValueError("prompt_embeds take the place of one prompt: no windows of prompts, no prompt extension")
    return embeds_states(embeds, cfg)


def lora_scale(attention_kwargs: Any) -> float:
    """diffusers' ``attention_kwargs``: for a Wan transformer only ``{"scale": s}`` does anything, the LoRA scale."""
    if not isinstance(attention_kwargs, dict) or set(attention_kwargs) - {"scale"}:
        raise ValueError(f'attention_kwargs takes {{"scale": s}} (the LoRAs\' scale) only, got {attention_kwargs!r}')
    scale = attention_kwargs.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"attention_kwargs' scale must be a finite number, got {scale!r}")
    return float(scale)


def diffusers_hooks(
    pipe: Any, attention_kwargs: Any, callback: Callable[..., Any] | None, tensor_inputs: Sequence[str]
) -> list[StepHook]:
    """The step hooks of a call's ``attention_kwargs`` (the LoRAs' scale) and ``callback_on_step_end``."""
    hooks: list[StepHook] = []
    if attention_kwargs is not None:
        hooks.append(LoraScale(lora_scale(attention_kwargs)))
    if callback is not None:
        hooks.append(StepEndCallback(pipe, callback, tensor_inputs, pipe.dit_cfg.text_len))
    return hooks


class StepEndCallback(StepHook):
    """diffusers' ``callback_on_step_end(pipe, i, t, callback_kwargs) -> dict`` as a step hook. After each step it
    gets the tensors ``tensor_inputs`` names (the latents; the prompt states the DiT reads, (1, 512, dim) in its
    dtype); the latents and prompt states it returns replace the run's; ``pipe._interrupt = True`` ends the run after
    the step. A diffusers ``PipelineCallback`` object names its own ``tensor_inputs``, which win (as in diffusers)."""

    def __init__(self, pipe: Any, fn: Callable[..., Any], tensor_inputs: Sequence[str], text_len: int):
        self.pipe, self.fn, self.text_len = pipe, fn, text_len
        self.tensor_inputs = check_tensor_inputs(getattr(fn, "tensor_inputs", tensor_inputs))
        self.cond: Any = None  # the run's ``Conditioning``, seen by the first velocity call (never a cached step)
        self.device = torch.device("cpu")

    def begin(self, steps: Sequence[Step]) -> None:
        self.pipe._interrupt = False
        self.pipe._num_timesteps = len(steps)

    def before(self, step: Step, model: torch.nn.Module) -> None:
        self.pipe._current_timestep = torch.tensor(step.timestep)

    def wrap(self, velocity: Velocity, step: Step) -> Velocity:
        def seen(model, latents, t, cond, scale):  # (the ``Velocity`` signature)
            self.cond = cond
            return velocity(model, latents, t, cond, scale)

        return seen

    def after(self, step: Step, latents: torch.Tensor) -> torch.Tensor | None:
        self.device = latents.device  # (where ``finished`` agrees with the other ranks)
        given = {name: self._tensor(name, latents) for name in self.tensor_inputs}
        out = self.fn(self.pipe, step.index, torch.tensor(step.timestep, device=latents.device), dict(given))
        if not isinstance(out, dict):
            raise TypeError(f"callback_on_step_end must return a dict (its callback_kwargs), got {type(out).__name__}")
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            if out.get(name) is not None and out[name] is not given.get(name):
                self._set_context(name, out[name])
        new = out.get("latents")
        if new is None or new is latents:
            return None
        if not isinstance(new, torch.Tensor) or new.shape != latents.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"callback_on_step_end returned latents of {got}; the run's are {tuple(latents.shape)}")
        return new.to(latents.device, latents.dtype)

    def finished(self) -> bool:
        """The interrupt; in a distributed run, any rank's ends the run on every rank (the callback runs on each, and
        one that stopped alone would leave the others waiting in their next collective)."""
        stop = bool(self.pipe._interrupt)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(stop)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = self.pipe._interrupt = bool(flag.item())
        return stop

    def end(self) -> None:
        self.pipe._current_timestep = None

    def _tensor(self, name: str, latents: torch.Tensor) -> torch.Tensor | None:
        if name == "latents":
            return latents
        if name == "prompt_embeds":
            return self.cond.context
        # guidance 1 everywhere: no unconditional pass, so none (as diffusers without classifier-free guidance)
        return None if self.cond.context_null is self.cond.context else self.cond.context_null

    def _set_context(self, name: str, embeds: Any) -> None:
        old = self.cond.context if name == "prompt_embeds" else self.cond.context_null
        new = embeds_context(embeds, name, self.text_len, old.shape[-1])
        context = torch.nn.functional.pad(new, (0, 0, 0, self.text_len - new.shape[0]))[None].to(old.device, old.dtype)
        if name == "prompt_embeds":
            self.cond.context = context
        else:
            self.cond.context_null = context


def export_to_video(
    video_frames: Sequence[Any] | np.ndarray | torch.Tensor, output_video_path: str | None = None, fps: int = 10
) -> str:
    """diffusers' ``export_to_video``, written by wanflow (``io.video.save_video``: H.264 MP4, GIF, or PNG frames for
    a path ending in '/'). ``video_frames``: one video, e.g. ``output.frames[0]``: (F, H, W, 3) float in [0, 1]
    (or a list of such frames), (F, 3, H, W) tensor in [0, 1], uint8 frames, or a list of PIL images. Returns the
    path (a temporary .mp4 when none is given, as diffusers)."""
    if output_video_path is None:
        output_video_path = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False).name
    save_video(_uint8_frames(video_frames), output_video_path, fps=fps)
    return os.fspath(output_video_path)


def _uint8_frames(video_frames: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
    """One video as (F, H, W, 3) uint8; float frames in [0, 1] scaled by 255 and truncated (diffusers' rule)."""
    if isinstance(video_frames, torch.Tensor):
        if video_frames.ndim != 4 or video_frames.shape[1] != 3:
            raise ValueError(f"expected (frames, 3, height, width) frames in [0, 1], got {tuple(video_frames.shape)}")
        video_frames = video_frames.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    frames = np.stack([np.asarray(frame) for frame in video_frames])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = " (output.frames holds a batch: pass output.frames[0])" if frames.ndim == 5 else ""
        raise ValueError(f"expected frames of (height, width, 3), got {tuple(frames.shape)}{hint}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames.astype(np.float32), 0, 1) * 255).astype(np.uint8)


__all__ = [
    "CALLBACK_TENSORS",
    "OUTPUT_TYPES",
    "DiffusersMethods",
    "StepEndCallback",
    "WanPipelineOutput",
    "check_max_sequence_length",
    "diffusers_hooks",
    "diffusers_output",
    "embeds_context",
    "embeds_states",
    "export_to_video",
    "given_embeds",
    "lora_scale",
    "one_prompt",
    "postprocess",
]
