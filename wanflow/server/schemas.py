"""What a client may ask for: pydantic models with the limits a shared server enforces, and the job views it returns.

Checks that depend on the loaded model (size divisible by the VAE stride, guidance per expert) are the pipeline's
own ``resolve``; these limits only keep one request from taking the server down (huge sizes, thousands of frames).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wanflow.pipelines.presets import PRESETS
from wanflow.pipelines.request import MAX_GUIDE, GenerateOptions
from wanflow.prompts.system import LANGUAGES
from wanflow.sampling.comfy_schedules import SCHEDULERS, given_schedule, parse_sigmas
from wanflow.sampling.noise import MAX_SEED
from wanflow.sampling.solvers import SOLVERS
from wanflow.server.loras import MAX_LORAS, LoraChoice, parse_choices
from wanflow.tasks import TASKS, Task

SolverName = Literal[tuple(SOLVERS)]  # the solver registry's names


# How far past what a model was trained at a request may go: twice the side, twice the length. The published models
# (trained up to 1280x720 and 81 or 121 frames) keep the server's limits; a built-in one (64x64, 9 frames) gets
# 128x128 and 17 frames, not the minutes of work a 1280x704x121 request would cost it for noise.
TRAINED_SIZE_FACTOR = 2


@dataclass(frozen=True)
class Limits:
    """The most one request may ask for; a server started for bigger work passes its own. ``for_task`` narrows them
    to what one model was trained for."""

    max_prompt: int = 2000  # characters, prompt and negative prompt each
    max_side: int = 1920  # pixels, width and height each
    max_pixels: int = 1280 * 720  # width * height
    max_frames: int = 121
    max_steps: int = 100
    max_upload: int = 10 * 1024 * 1024  # bytes of an input image
    max_video_upload: int = 64 * 1024 * 1024  # bytes of an input video (video to video)
    max_image_pixels: int = 4096 * 4096  # decoded input image (a small file can hold a huge image)
    max_decodes: int = 2  # input images decoded at once (each in a worker thread)

    def for_task(self, task: Task | None) -> Limits:
        """These limits, within ``TRAINED_SIZE_FACTOR`` times the sizes and length ``task``'s model was trained at."""
        if task is None:
            return self
        k = TRAINED_SIZE_FACTOR
        side = k * max(max(size) for size in (task.size, *task.sizes))
        pixels = k * k * max(w * h for w, h in (task.size, *task.sizes))
        return dataclasses.replace(
            self,
            max_side=min(self.max_side, side),
            max_pixels=min(self.max_pixels, pixels),
            max_frames=min(self.max_frames, k * (task.frames - 1) + 1),
        )


IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp"}
VIDEO_TYPES = {"video/mp4", "video/webm", "video/quicktime"}


def parse_size(value: str) -> tuple[int, int]:
    """``"1280x720"`` or ``"1280*720"`` -> (width, height)."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX*]\s*(\d{1,5})\s*", value)
    if not match:
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 1280x720), got {value!r}")
    return int(match.group(1)), int(match.group(2))


class GenerateRequest(BaseModel):
    """One generation: every option of ``WanPipeline.__call__``; left out means the task's default."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(
        None, description=f"which loaded model: one of {', '.join(TASKS)} (may be left out when the server runs one)"
    )
    prompt: str = Field(min_length=1, description="what the video shows")
    negative_prompt: str | None = Field(None, description="what to avoid (default: the task's)")
    width: int | None = Field(None, gt=0, description="pixels; with an image, width * height is the area budget")
    height: int | None = Field(None, gt=0)
    frames: int | None = Field(None, ge=1, description="4n+1: 1, 5, 9, ..., 81, ...")
    fps: int | None = Field(
        None, ge=1, le=240, description="frames per second of the saved video (default: the task's)"
    )
    steps: int | None = Field(None, ge=1, description="denoising steps")
    shift: float | None = Field(None, gt=0, le=100, description="noise schedule shift")
    guide_scale: list[float] | None = Field(
        None, min_length=1, max_length=2, description="one value, or (low-noise, high-noise) for the A14B tasks"
    )
    solver: SolverName = Field("unipc", description="left out: the preset's solver, else unipc")
    seed: int = Field(
        -1, ge=-1, le=MAX_SEED, description="-1 draws one; the job reports it (a number, or a string of one)"
    )
    preset: Literal[tuple(PRESETS)] | None = Field(None, description="sampling preset (lightning: 4 steps, no CFG)")
    float_timesteps: bool | None = Field(None, description="the DiT sees 1000 * sigma unrounded (distilled LoRAs)")
    noise_device: Literal["device", "cpu"] | None = Field(
        None, description="where the initial noise is drawn: the worker's device (default) or the CPU (ComfyUI's)"
    )
    low_noise_seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="lcm: the low-noise expert's own seed for its step noise (ComfyUI's)"
    )
    image_fit: Literal["area", "crop"] | None = Field(
        None, description="area (the reference's) or crop (ComfyUI's: the size itself, the image centre-cropped)"
    )
    image_scale: str | None = Field(
        None,
        max_length=60,
        description="with image_fit crop: ComfyUI's ImageScale first, 'lanczos:832*480:center', or KJNodes' "
        "ImageResizeKJv2, 'lanczos:832*480:crop:center:16'",
    )
    low_noise_shift: float | None = Field(
        None, gt=0, le=100, description="the low-noise expert's steps at their own shift (ComfyUI's 2nd sampler)"
    )
    scheduler: Literal[tuple(sorted(SCHEDULERS))] | None = Field(
        None, description="the steps of ComfyUI's scheduler of this name (default: the solver's reference grid)"
    )
    sigmas: str | list[float] | None = Field(
        None, description="the steps' noise levels as given, no shift: '1,0.9375,0.8333,0.625' (0 appended)"
    )
    cache: str | None = Field(
        None, max_length=40, description="step cache: magcache[:THRESHOLD] or easycache[:THRESHOLD[:START:END]]"
    )
    switch_step: int | None = Field(
        None, ge=0, description="A14B: the high-noise expert's steps (default: by timestep)"
    )
    sampler_calls: str | list[int] | None = Field(
        None, max_length=40, description="ComfyUI's chain of sampler calls: the steps the later ones start at, '2,4'"
    )
    call_guide_scale: str | list[float] | None = Field(
        None, max_length=80, description="each sampler call's guidance scale, '3.5,1,1'"
    )
    call_seeds: str | list[int] | None = Field(
        None, max_length=80, description="the later sampler calls' step-noise seeds (default: the run's)"
    )
    strength: float | None = Field(
        None, gt=0, le=1, description="with a video file: the share of the steps that run (default 0.8)"
    )
    extend: bool | None = Field(
        None, description="with a video file: continue it (frames: the whole length) instead of redoing it"
    )
    guidance: str | None = Field(None, max_length=40, description="cfg (default) or cfg_zero_star[:K]")
    slg_layers: str | list[int] | None = Field(None, description="skip layer guidance: blocks to leave out, '9,10'")
    slg_scale: float | None = Field(None, ge=0, le=MAX_GUIDE, description="skip layer guidance's scale (2.8)")
    slg_start: float | None = Field(None, ge=0, le=1, description="SLG's first steps, a fraction (0.01)")
    slg_stop: float | None = Field(None, ge=0, le=1, description="SLG's last steps, a fraction (0.2)")
    slg_mode: Literal["pass", "uncond"] | None = Field(None, description="SLG: a third pass, or a weakened uncond")
    slg_percent: str | list[float] | None = Field(
        None, max_length=40, description="SLG's window as ComfyUI's start and end percent, '0.01,0.15'"
    )
    nag_scale: float | None = Field(
        None, ge=1, le=MAX_GUIDE, description="NAG: the negative prompt also at guidance 1; above 1 turns it on"
    )
    nag_tau: float | None = Field(None, gt=0, le=MAX_GUIDE, description="NAG's cap on the norm ratio (2.5)")
    nag_alpha: float | None = Field(None, ge=0, le=1, description="NAG's blend weight (0.25)")
    nag_negative_prompt: str | None = Field(None, description="what NAG pushes away from (the negative prompt)")
    riflex: int | None = Field(
        None, ge=0, le=64, description="RIFLEx for videos past 81 frames: the frame frequency to lower (6); 0: off"
    )
    enhance_a_video: float | None = Field(
        None, ge=0, le=MAX_GUIDE, description="Enhance-A-Video's weight (2: KJNodes' default); 0: off"
    )
    loras: list[LoraChoice] = Field(default_factory=list, max_length=MAX_LORAS, description="by name (GET /api/loras)")
    window_frames: int | None = Field(None, ge=1, description="frames per window of a longer video (4n+1)")
    window_overlap: int | None = Field(None, ge=4, description="frames a window takes from the one before (4k)")
    window_anchor: float | None = Field(None, ge=0, le=1, description="grade each window's colours to the first's")
    extend_prompt: bool | None = Field(None, description="rewrite the prompt with the server's prompt extender first")
    prompt_extend_lang: Literal[LANGUAGES] | None = Field(None, description="the extended prompt's language (zh)")
    prompt_extend_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: the run's seed")

    @field_validator("guide_scale", mode="before")
    @classmethod
    def _guide_list(cls, value):
        if isinstance(value, (int, float)):
            return [value]
        if isinstance(value, str):  # a form field: "5" or "3,4"
            try:
                return [float(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"guide_scale must be a number or two numbers 'low,high', got {value!r}") from None
        return value

    _loras = field_validator("loras", mode="before")(parse_choices)

    @model_validator(mode="after")
    def _preset_solver(self):
        """A preset's solver when none was given (the schema's default would hide it); stored with the job."""
        if self.preset and "solver" not in self.model_fields_set:
            self.solver = PRESETS[self.preset].get("solver", self.solver)
        return self

    @field_validator("frames")
    @classmethod
    def _four_n_plus_one(cls, value):
        if value is not None and (value - 1) % 4:
            raise ValueError(f"frames must be 4n+1 (1, 5, 9, ..., 81, ...), got {value}")
        return value

    def size(self) -> tuple[int, int] | None:
        if self.width is None and self.height is None:
            return None
        if self.width is None or self.height is None:
            raise ValueError("give both width and height, or neither")
        return self.width, self.height

    def check(self, limits: Limits, why: str = "") -> None:
        """The server's limits; ``ValueError`` with the field and the bound, and ``why`` after it."""
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if text is not None and len(text) > limits.max_prompt:
                raise ValueError(f"{name} is {len(text)} characters; the limit is {limits.max_prompt}")
        size = self.size()
        if size is not None:
            w, h = size
            if max(w, h) > limits.max_side or w * h > limits.max_pixels:
                raise ValueError(
                    f"size {w}x{h} is over the limit ({limits.max_side} pixels a side, {limits.max_pixels} in all){why}"
                )
        if self.frames is not None and self.frames > limits.max_frames:
            raise ValueError(f"frames {self.frames} is over the limit of {limits.max_frames}{why}")
        if self.steps is not None and self.steps > limits.max_steps:
            raise ValueError(f"steps {self.steps} is over the limit of {limits.max_steps}")
        if self.sigmas is not None and given_schedule(parse_sigmas(self.sigmas)).num_steps > limits.max_steps:
            raise ValueError(f"sigmas make more steps than the limit of {limits.max_steps}")

    def options(self, image=None, last_image=None, video=None) -> GenerateOptions:
        """The pipeline's options for this request (its own ``resolve`` checks them against the model)."""
        return GenerateOptions(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            image=image,
            last_image=last_image,
            video=None if self.extend else video,
            strength=self.strength,
            extend=video if self.extend else None,
            size=self.size(),
            frames=self.frames,
            steps=self.steps,
            shift=self.shift,
            guide_scale=None if self.guide_scale is None else tuple(self.guide_scale),
            solver=self.solver,
            seed=self.seed,
            noise_device=self.noise_device,
            low_noise_seed=self.low_noise_seed,
            low_noise_shift=self.low_noise_shift,
            image_fit=self.image_fit,
            image_scale=self.image_scale,
            preset=self.preset,
            float_timesteps=self.float_timesteps,
            scheduler=self.scheduler,
            sigmas=self.sigmas,
            window_frames=self.window_frames,
            window_overlap=self.window_overlap,
            window_anchor=self.window_anchor,
            extend_prompt=self.extend_prompt,
            prompt_extend_lang=self.prompt_extend_lang,
            prompt_extend_seed=self.prompt_extend_seed,
            cache=self.cache,
            switch_step=self.switch_step,
            sampler_calls=self.sampler_calls,
            call_guide_scale=self.call_guide_scale,
            call_seeds=self.call_seeds,
            guidance=self.guidance,
            slg_layers=self.slg_layers,
            slg_scale=self.slg_scale,
            slg_start=self.slg_start,
            slg_stop=self.slg_stop,
            slg_mode=self.slg_mode,
            slg_percent=self.slg_percent,
            nag_scale=self.nag_scale,
            nag_tau=self.nag_tau,
            nag_alpha=self.nag_alpha,
            nag_negative_prompt=self.nag_negative_prompt,
            riflex=self.riflex,
            enhance_a_video=self.enhance_a_video,
        )


def openai_fields(form: dict[str, object], fps: int, default_task: str) -> dict[str, object]:
    """OpenAI's ``POST /v1/videos`` fields (``model``, ``size`` "WxH", ``seconds``) -> ``GenerateRequest`` fields."""
    fields = dict(form)
    fields["task"] = fields.pop("model", None) or default_task
    size = fields.pop("size", None)
    if size is not None:
        fields["width"], fields["height"] = parse_size(str(size))
    seconds = fields.pop("seconds", None)
    if seconds is not None:
        if "frames" in fields:
            raise ValueError("give seconds or frames, not both")
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"seconds must be a number, got {seconds!r}") from None
        if not 0 < value <= 60:
            raise ValueError(f"seconds must be in (0, 60], got {seconds!r}")
        fields["frames"] = 4 * max(0, round(value * fps / 4)) + 1  # the nearest 4n+1
    return fields


class JobView(BaseModel):
    """A job as the native API shows it."""

    id: str
    task: str
    model: str | None = Field(None, description="the model that runs it (a built-in one is named as its task)")
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(description="0 to 1 over text encoding, denoising and decoding")
    stage: str | None = None
    step: int | None = Field(None, description="denoising steps done")
    steps: int | None = None
    expert: str | None = Field(None, description="the active expert (high_noise / low_noise) of the A14B tasks")
    eta_seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    seed: str | None = Field(None, description="a string: seeds go up to 2^64 - 1, past what JavaScript numbers hold")
    params: dict[str, object] = Field(description="the request, its seed as a string")
    has_image: bool = False
    video_url: str | None = None
    worker: str | None = Field(None, description="the worker running it, or that ran it")
    waiting: str | None = Field(None, description="why a queued job does not start, e.g. 'no worker for model X'")
    extended_prompt: str | None = Field(None, description="the prompt the video was made from, when it was extended")


class VideoView(BaseModel):
    """A job in the shape of OpenAI's video object."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(description="0 to 100")
    created_at: int
    completed_at: int | None = None
    size: str | None = None
    seconds: str | None = None
    error: dict[str, str] | None = None
