"""One generation request: ``GenerateOptions`` holds what the user asked for (None = the task's default), and
``resolve`` fills the defaults and checks every value once, at the boundary, into a ``Request``.

The Python API takes the options as keywords, the CLI maps its flags onto them (``cli/generate.py``), and the
server's schema maps its fields onto them (``server/schemas.py``); none of them checks a value itself.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from wanflow.io.image import IMAGE_FITS, load_image
from wanflow.io.resize_nodes import ImageResize, ImageScale, image_scale
from wanflow.pipelines.calls import CallPlan, resolve_calls
from wanflow.pipelines.presets import apply_preset
from wanflow.pipelines.video_to_video import read_extended, read_video, video_size
from wanflow.pipelines.windows import WindowPlan, latent_frames, pixel_count, plan_windows
from wanflow.prompts.system import LANGUAGES
from wanflow.runtime.easycache import EasyCacheSettings
from wanflow.runtime.nag import NagSettings
from wanflow.runtime.step_cache import CacheSettings, parse_cache
from wanflow.sampling.comfy_schedules import comfy_schedule, for_sampler, given_schedule, parse_sigmas
from wanflow.sampling.diffusers_schedulers import SchedulerGrid, scheduler_grid
from wanflow.sampling.guidance import CFG, Guidance, SkipLayers, comfy_window, parse_guidance
from wanflow.sampling.noise import NOISE_DEVICES, draw_seed
from wanflow.sampling.schedule import Schedule
from wanflow.sampling.solvers import SOLVERS, get_solver
from wanflow.tasks import TASKS, Task

log = logging.getLogger(__name__)

MAX_STEPS = 1000
MAX_GUIDE = 100.0


@dataclass(frozen=True)
class GenerateOptions:
    """What one generation asks for, with the same names for every task; None means the task's default."""

    prompt: str | list[str]  # a list (or "a | b | c"): one prompt per window of a longer video
    negative_prompt: str | None = None  # None: the task's; "": none (an empty negative prompt)
    image: Any = None  # a path or a PIL image (I2V needs one; with TI2V it selects image-to-video)
    size: tuple[int, int] | None = None  # (width, height); with an image: the pixel-area budget
    frames: int | None = None  # 4n + 1
    steps: int | None = None
    shift: float | None = None
    guide_scale: float | tuple[float, ...] | list[float] | None = None  # one value, or (low-noise, high-noise)
    solver: str | None = None  # a key of ``sampling.solvers.SOLVERS``; None: the preset's, else unipc
    seed: int | None = -1  # negative: draw one (reported in the result)
    noise_device: str | None = None  # "cpu": the initial noise drawn on the CPU (ComfyUI's); None / "device": the run's
    low_noise_seed: int | None = None  # the low-noise expert's own seed for lcm's step noise (ComfyUI's 2nd sampler's)
    # the low-noise expert's sampler call laid out at its own shift from switch_step on (ComfyUI's second
    # KSamplerAdvanced on a model whose ModelSamplingSD3 shift differs); needs a ComfyUI scheduler; None: one schedule
    low_noise_shift: float | None = None
    preset: str | None = None  # a key of ``pipelines.presets.PRESETS``: values for the options left None
    float_timesteps: bool | None = None  # the DiT sees 1000 * sigma unrounded (step-distilled LoRAs); default False
    last_image: Any = None  # a path or a PIL image: the last frame (first-last frame; tasks with ``Task.last_image``)
    # how an input image meets the size: "area" (the reference's: its aspect within the size's area) or "crop"
    # (ComfyUI's Wan image nodes': the size itself, the image's centre cropped and resized bilinear); None: "area"
    image_fit: str | None = None
    # ComfyUI's ImageScale node on the input images before that fit ("lanczos:832*480:center") or KJNodes'
    # ImageResizeKJv2 ("lanczos:832*480:crop:center:16"), ``io.resize_nodes``; with image_fit "crop"; None: none
    image_scale: Any = None
    window_frames: int | None = None  # frames per window of a longer video (4n+1); None: the published model's frames
    window_overlap: int | None = None  # frames a window takes from the one before (a multiple of 4); None: 16 or less
    window_anchor: float | None = None  # 0..1: grade each window's colours towards window 1's; None: 0 (off)
    extend_prompt: bool | None = None  # rewrite the prompt with the pipeline's prompt extender first; default False
    prompt_extend_lang: str | None = None  # "zh" (the reference's default) or "en": the extended prompt's language
    prompt_extend_seed: int | None = None  # the extender's sampling seed; None: the run's seed
    # step cache: "magcache[:THRESHOLD]" (``runtime.step_cache``) or "easycache[:THRESHOLD[:START:END]]"
    # (``runtime.easycache``); None: off
    cache: str | None = None
    switch_step: int | None = None  # A14B: the high-noise expert runs the first K steps; None: the task's boundary
    video: Any = None  # video to video: a path, PIL images, (F, H, W, 3) frames, a Video (``pipelines.video_to_video``)
    strength: float | None = None  # with a video: the share of the steps that run, (0, 1]; None: 0.8
    extend: Any = None  # a video to continue (sources as ``video``): frames is then the whole length; None: +1 window
    guidance: str | None = None  # "cfg" or "cfg_zero_star[:K]" (``sampling.guidance``); None: cfg
    slg_layers: Any = None  # skip layer guidance: the blocks its third pass leaves out ("9,10" or [9, 10]); None: off
    slg_scale: float | None = None  # SLG's scale; None: 2.8
    slg_start: float | None = None  # SLG runs on the steps strictly after int(start * steps); None: 0.01
    slg_stop: float | None = None  # ... and before int(stop * steps); None: 0.2
    slg_mode: str | None = None  # "pass" (a third pass; None) or "uncond" (the unconditional pass without the blocks)
    # SLG runs where the sigma lies between ComfyUI's percent_to_sigma of START and of END ("0.01,0.15" or a pair;
    # its skip layer guidance nodes' start and end percent, at the run's shift), in place of slg_start / slg_stop
    slg_percent: Any = None
    nag_scale: float | None = None  # NAG (``runtime.nag``): above 1 turns it on; None: off
    nag_tau: float | None = None  # NAG's cap on the norm ratio; None: 2.5
    nag_alpha: float | None = None  # NAG's blend weight; None: 0.25
    nag_negative_prompt: str | None = None  # what NAG pushes away from; None: the run's negative prompt
    # RIFLEx (``runtime.riflex``): the DiT's frame frequency k (1-based) lowered for the video's length, for videos
    # longer than the model's 81 frames (6: KJNodes' and the authors' Wan setting); None or 0: off
    riflex: int | None = None
    # Enhance-A-Video (``runtime.enhance_a_video``): each block's self-attention output scaled by its frames' mutual
    # attention, this weight added to the frame count (2: KJNodes' node's default); None or 0: off
    enhance_a_video: float | None = None
    scheduler: str | None = None  # ComfyUI's scheduler names (``sampling.comfy_schedules``); None: the solver's grid
    sigmas: Any = None  # the schedule itself, no shift ("1,0.94,0.83,0.63" or a list), ending at 0; None: off
    # ComfyUI's chain of sampler calls (``pipelines.calls``): the steps the calls after the first start at ("2,4" or
    # [2, 4]; on two experts switch_step is one of them), each call's guidance scale ("3.5,1,1"; None: its expert's),
    # the later calls' step-noise seeds ("5,6"; None: the run's), a loaded LoRA's strength in each call of its experts
    # ({"lightx2v": [0, 1]}); each call starts its solver afresh
    sampler_calls: Any = None
    call_guide_scale: Any = None
    call_seeds: Any = None
    call_loras: Any = None

    @classmethod
    def from_keywords(cls, prompt: str, **keywords: Any) -> GenerateOptions:
        """Options from keyword arguments, wanflow's names or diffusers' (``DIFFUSERS_NAMES``), with a clear error for
        a name that is neither."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - names - set(DIFFUSERS_NAMES))
        if unknown:
            raise ValueError(
                f"unknown generation options {unknown}; the options are {sorted(names - {'prompt'})}, or diffusers' "
                f"names {list(DIFFUSERS_NAMES)}"
            )
        return cls(prompt, **from_diffusers_names(keywords))


# diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` argument names, mapped onto the fields above by
# ``from_diffusers_names`` and nowhere else (docs/python-api.md). ``negative_prompt``, ``image``, ``latents`` and
# ``WanVideoToVideoPipeline``'s ``video`` and ``strength`` have the same name on both sides.
DIFFUSERS_NAMES = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "generator",
    "num_videos_per_prompt",
)


# The options only wanflow's calls name (diffusers' calls name the same things otherwise, or not at all): a call that
# passes ``prompt=`` by name and none of these is a diffusers call (``WanPipeline.__call__``).
WANFLOW_NAMES = frozenset(
    f.name
    for f in dataclasses.fields(GenerateOptions)
    if f.name not in ("prompt", "negative_prompt", "image", "last_image", "video", "strength")
    and not f.name.startswith("nag_")  # (the NAG authors' diffusers pipeline takes them by these names)
)


def from_diffusers_names(keywords: dict[str, Any]) -> dict[str, Any]:
    """Keywords with diffusers' names replaced by wanflow's (a None value counts as not given, as in diffusers):

    - ``height`` + ``width`` -> ``size=(width, height)`` (both or neither);
    - ``num_frames`` -> ``frames``, ``num_inference_steps`` -> ``steps``;
    - ``guidance_scale`` is the scale of diffusers' ``transformer``, the high-noise expert (or the only model), and
      ``guidance_scale_2`` that of ``transformer_2``, the low-noise expert (default: ``guidance_scale``), so
      ``guide_scale=(guidance_scale_2, guidance_scale)``: (low-noise, high-noise), the reference's order; a
      ``guidance_scale`` of 1 or less turns guidance off for both experts, as in diffusers (``guide_scale=1``);
    - ``generator`` -> ``seed=generator.initial_seed()``: the seed is what counts, and the generator's device (a CPU
      generator: ``noise_device="cpu"``, the noise drawn on the CPU as diffusers draws it), not its state;
    - ``num_videos_per_prompt``: 1 here (a batch is split into one call per video first: ``diffusers_batch``).
    """
    given = {k: v for k, v in keywords.items() if k in DIFFUSERS_NAMES and v is not None}
    out = {k: v for k, v in keywords.items() if k not in DIFFUSERS_NAMES}
    renamed = {
        "size": _diffusers_size(given),
        "frames": given.get("num_frames"),
        "steps": given.get("num_inference_steps"),
        "guide_scale": _diffusers_guidance(given),
        "seed": _diffusers_seed(given),
    }
    if out.get("noise_device") is None and getattr(given.get("generator"), "device", None) == torch.device("cpu"):
        out["noise_device"] = "cpu"  # (diffusers draws a CPU generator's noise on the CPU, then moves it)
    for name, value in renamed.items():
        if value is None:
            continue
        if out.get(name) is not None:
            alias = {"size": "height/width", "guide_scale": "guidance_scale"}.get(name, "its diffusers name")
            raise ValueError(f"{name} is given twice, as {name} and as {alias}: pass one of them")
        out[name] = value
    if given.get("num_videos_per_prompt", 1) != 1:
        raise ValueError("one video per call here: a batch is split into one call per video first (diffusers_batch)")
    return out


def _diffusers_size(given: dict[str, Any]) -> tuple[int, int] | None:
    if ("height" in given) != ("width" in given):
        raise ValueError("pass height and width together (or size=(width, height)); the default size is the task's")
    return (given["width"], given["height"]) if "height" in given else None


def _diffusers_guidance(given: dict[str, Any]) -> float | tuple[float, float] | None:
    high, low = given.get("guidance_scale"), given.get("guidance_scale_2")
    if high is None:
        if low is not None:
            raise ValueError("guidance_scale_2 (the low-noise expert's scale) needs guidance_scale (the high-noise's)")
        return None
    if isinstance(high, (int, float)) and not isinstance(high, bool) and high <= 1.0:
        return 1.0  # diffusers: no classifier-free guidance at all (guidance_scale_2 unread): the prompt's prediction
    return high if low is None else (low, high)


def _diffusers_seed(given: dict[str, Any]) -> int | None:
    generator = given.get("generator")
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be one torch.Generator here (a list of them is a batch, split into one call per video "
            f"first), got {type(generator).__name__}"
        )
    return generator.initial_seed()


@dataclass(frozen=True)
class Extension:
    """How the prompt is to be extended, and (once it ran) how it was."""

    lang: str  # one of ``prompts.system.LANGUAGES``
    seed: int
    original: str | None = None  # the prompt as given
    extender: str = ""  # which model extended it ("local:Qwen/...", "dashscope:qwen-plus")
    extended: bool = False  # False: it failed, and the original prompt was used

    def metadata(self) -> dict[str, object]:
        return {
            "original_prompt": self.original,
            "prompt_extender": self.extender,
            "prompt_extended": self.extended,
            "prompt_extend_lang": self.lang,
            "prompt_extend_seed": self.seed,
        }


@dataclass(frozen=True)
class Request:
    """Resolved options of one generation: every default filled, every value checked."""

    prompt: str
    negative_prompt: str
    image: Image.Image | None
    size: tuple[int, int]
    frames: int
    steps: int
    shift: float
    guide_scale: tuple[float, float] | float
    solver: str
    seed: int
    float_timesteps: bool = False
    noise_device: str | None = None  # "cpu": the initial noise drawn on the CPU; None: on the run's device
    # lcm's step noise from the expert switch on: a generator of this seed (ComfyUI's second KSamplerAdvanced call)
    low_noise_seed: int | None = None
    # the low-noise expert's call's steps at its own shift from switch_step on (``low_noise_shift``); None: one schedule
    low_schedule: Schedule | None = None
    low_noise_shift: float | None = None
    last_image: Image.Image | None = None
    image_fit: str = "area"  # "crop": the size itself, the input images fit as ComfyUI's Wan image nodes fit them
    # ComfyUI's ImageScale node (or KJNodes' ImageResizeKJv2) on the input images before that fit
    image_scale: ImageScale | ImageResize | None = None
    extension: Extension | None = None  # rewrite the prompt first (``pipelines.prompt_extension``)
    windows: WindowPlan | None = None  # a video longer than one window; None: one window
    grid: SchedulerGrid | None = None  # pipe.scheduler's, a ComfyUI scheduler's or given steps, not the solver's
    cache: CacheSettings | EasyCacheSettings | None = None  # MagCache's (runtime.step_cache) or EasyCache's
    switch_step: int | None = None  # the high-noise expert's steps, in place of the boundary timestep
    video: list[Image.Image] | None = None  # video to video: the frames the run starts from, at their own size
    strength: float | None = None  # the share of the steps that run from the video (``pipelines.video_to_video``)
    extend: list[Image.Image] | None = None  # the frames of a video being continued (window 1 of ``windows``)
    guidance: Guidance = CFG  # how each step's two predictions combine (``sampling.guidance``)
    nag: NagSettings | None = None  # normalized attention guidance (``runtime.nag``); None: off
    riflex: int = 0  # RIFLEx's frame frequency (``runtime.riflex``); 0: off
    enhance_a_video: float = 0.0  # Enhance-A-Video's weight (``runtime.enhance_a_video``); 0: off
    calls: CallPlan | None = None  # ComfyUI's chain of sampler calls (``pipelines.calls``); None: one run

    @property
    def scales(self) -> tuple[float, ...]:
        """Every guidance scale a step of the run may use."""
        experts = self.guide_scale if isinstance(self.guide_scale, tuple) else (self.guide_scale,)
        return experts if self.calls is None or self.calls.guide_scales is None else self.calls.guide_scales

    @property
    def window_frames(self) -> int:
        """Pixel frames of the longest stretch the DiT denoises at once."""
        return self.frames if self.windows is None else pixel_count(self.windows.window)

    def metadata(self) -> dict[str, object]:
        """What a last image, a longer video and an extended prompt add to the output's metadata."""
        return {
            **({"last_image": True} if self.last_image is not None else {}),
            **({"image_fit": self.image_fit} if self.image_fit != "area" and self.image is not None else {}),
            **({"image_scale": str(self.image_scale)} if self.image_scale is not None else {}),
            **(self.windows.metadata() if self.windows is not None else {}),
            **(self.extension.metadata() if self.extension is not None else {}),
            **(self.grid.metadata() if self.grid is not None else {}),
            **({"switch_step": self.switch_step} if self.switch_step is not None else {}),
            **({"noise_device": self.noise_device} if self.noise_device is not None else {}),
            **({"low_noise_seed": self.low_noise_seed} if self.low_noise_seed is not None else {}),
            **({"low_noise_shift": self.low_noise_shift} if self.low_noise_shift is not None else {}),
            **({"video_strength": self.strength} if self.video is not None else {}),
            **({"guidance": str(self.guidance)} if self.guidance.rule != "cfg" else {}),
            **({"slg": self.guidance.slg.metadata()} if self.guidance.slg is not None else {}),
            **({"nag": self.nag.metadata(self.negative_prompt)} if self.nag is not None else {}),
            **({"riflex": self.riflex} if self.riflex else {}),
            **({"enhance_a_video": self.enhance_a_video} if self.enhance_a_video else {}),
            **(self.calls.metadata() if self.calls is not None else {}),
        }

    def require_image(self) -> Image.Image:
        if self.image is None:
            raise ValueError("this task needs an image: pass image=... (CLI: --image PATH)")
        return self.image


def resolve(options: GenerateOptions, task: Task, multiple: int | None = None, image_hint: str = "") -> Request:
    """Fill defaults from ``task`` and check every option. ``multiple``: what width and height must be multiples of
    (default the task's: VAE stride x patch); ``image_hint``: what a missing image is called on the caller's surface
    ("an input image: --image PATH")."""
    o = apply_preset(options, options.preset)
    if not isinstance(o.prompt, (str, list, tuple)):
        raise ValueError("prompt must be a string (or one string per window)")
    if o.negative_prompt is not None and not isinstance(o.negative_prompt, str):
        raise ValueError('negative_prompt must be a string ("" for none) or None for the task\'s default')
    needs = image_hint or "an image: pass image=... (CLI: --image PATH)"
    extend = read_extended(o.extend, o.video)
    if extend and o.image is None and task.image == "required":
        o = dataclasses.replace(o, image=extend[0])  # I2V continues a video from its first frame
    if o.last_image is not None and o.image is None and task.last_image and task.image == "required":
        raise ValueError(f"a last image needs a first image too: {task.name} needs {needs}")  # the cause, first
    task.check_image(o.image is not None, needs)
    asked = None if o.frames is None else _frames(o.frames)
    video, strength = read_video(o.video, o.strength, asked)
    frames = asked or (len(video) if video else None if extend else task.frames)  # extending: None, one window more
    steps = _steps(task.steps if o.steps is None else o.steps)
    shift = _shift(task.shift if o.shift is None else o.shift)
    solver = _solver(o.solver or "unipc")
    width, height = _size(o.size, video or extend, task, multiple)
    image = None if o.image is None else load_image(o.image)
    image_fit = _image_fit(o.image_fit)
    if image is None or image_fit == "crop":  # (the size itself: it must fit the latent grid)
        _check_size(task, width, height, multiple or task.size_multiple)
    windows = _windows(o, task, frames, len(extend) if extend else None)
    frames = frames or pixel_count(windows.total)
    grid = _grid(options, o, solver, steps, shift)
    asked_steps, steps = steps, steps if grid is None else grid.schedule.num_steps
    switch = _switch_step(o.switch_step, task, steps)
    low_shift, low_schedule = _low_call(o, grid, solver, asked_steps, switch, shift, bool(video or extend or windows))
    one_window = not (video or extend or windows)
    calls = resolve_calls(o, steps, switch, task.is_moe, one_window, MAX_GUIDE)
    seed = draw_seed(o.seed)
    return Request(
        prompt=o.prompt if isinstance(o.prompt, str) else " | ".join(o.prompt),
        negative_prompt=task.negative_prompt if o.negative_prompt is None else o.negative_prompt,
        image=image,
        size=(width, height),
        frames=frames,
        steps=steps,
        shift=shift,
        guide_scale=_guide(task.guide_scale if o.guide_scale is None else o.guide_scale, task),
        solver=solver,
        seed=seed,
        noise_device=_noise_device(o.noise_device),
        low_noise_seed=None if o.low_noise_seed is None else draw_seed(o.low_noise_seed, "low_noise_seed"),
        float_timesteps=bool(o.float_timesteps) if grid is None else grid.schedule.timesteps.is_floating_point(),
        last_image=_last_image(o.last_image, image, task, frames, image_fit == "crop"),
        image_fit=image_fit,
        image_scale=_image_scale(o.image_scale, image, image_fit),
        extension=_extension(o, seed),
        windows=windows,
        cache=_cache(o.cache, solver, o.slg_layers is not None),
        switch_step=switch,
        low_schedule=low_schedule,
        low_noise_shift=low_shift,
        video=video or None,
        strength=strength if video else None,
        extend=extend or None,
        guidance=_guidance(o, shift, solver),
        nag=_nag(o),
        riflex=_riflex(o.riflex),
        enhance_a_video=_enhance(o.enhance_a_video),
        grid=grid,
        calls=calls,
    )


def with_scheduler(request: Request, options: GenerateOptions, scheduler: Any) -> Request:
    """``request`` stepped by a diffusers scheduler (``pipe.scheduler``): its grid for the request's steps, the solver
    of its family, its shift. Options that choose another sampler (``shift``, ``solver``, ``float_timesteps``, or a
    preset's) are refused rather than silently dropped."""
    o = apply_preset(options, options.preset)
    chosen = [
        name for name in ("shift", "solver", "float_timesteps", "scheduler", "sigmas") if getattr(o, name) is not None
    ]
    if chosen:
        raise ValueError(
            f"{chosen} choose the sampler, which pipe.scheduler ({type(scheduler).__name__}) sets for this pipeline; "
            "leave them out, or set pipe.scheduler = None to go back to wanflow's"
        )
    grid = scheduler_grid(scheduler, request.steps)
    floats = grid.schedule.timesteps.is_floating_point()
    return dataclasses.replace(request, solver=grid.solver, shift=grid.shift, float_timesteps=floats, grid=grid)


def _noise_device(value: str | None) -> str | None:
    if value not in (None, *NOISE_DEVICES):
        raise ValueError(f"noise_device is one of {NOISE_DEVICES} (the CPU: ComfyUI's noise), got {value!r}")
    return "cpu" if value == "cpu" else None


def _grid(given: GenerateOptions, o: GenerateOptions, solver: str, steps: int, shift: float) -> SchedulerGrid | None:
    """The steps of ComfyUI's scheduler ``scheduler`` or of the ``sigmas`` given (``sampling.comfy_schedules``), in
    place of the solver's own grid; the DiT fed float timesteps unless ``float_timesteps`` is False. ``given``: the
    options before the preset's values, so a preset's steps and shift give way to the sigmas."""
    floats = o.float_timesteps is None or bool(o.float_timesteps)
    if o.sigmas is None:
        return (
            None
            if o.scheduler is None
            else SchedulerGrid(o.scheduler, solver, shift, comfy_schedule(o.scheduler, steps, shift, floats, solver))
        )
    if o.scheduler is not None:
        raise ValueError("sigmas are a whole schedule: give scheduler or sigmas, not both")
    if given.shift is not None:
        raise ValueError("sigmas are used as given, with no shift: leave shift out (or shift the sigmas yourself)")
    schedule = for_sampler(given_schedule(parse_sigmas(o.sigmas), floats), solver, shift)  # (shift: the model's)
    if given.steps is not None and given.steps != schedule.num_steps:
        raise ValueError(f"steps={given.steps}, but the sigmas make {schedule.num_steps} steps: leave steps out")
    return SchedulerGrid("sigmas", solver, shift, schedule)


def _guidance(o: GenerateOptions, shift: float, solver: str) -> Guidance:
    """The rule and skip layer guidance; a CFG++ sampler reads every step's unconditional pass, which CFG-Zero*'s
    zero steps do not run."""
    guidance = dataclasses.replace(parse_guidance(o.guidance), slg=_slg(o, shift))
    if guidance.zero_init_steps and get_solver(solver).uncond:
        raise ValueError(f"{solver} reads every step's unconditional pass, which cfg_zero_star's first steps skip: "
                         "give cfg_zero_star:0 (the scale alone) or another sampler")  # fmt: skip
    return guidance


def _slg(o: GenerateOptions, shift: float) -> SkipLayers | None:
    """Skip layer guidance's settings where ``slg_layers`` names blocks, diffusers' defaults for the others; its
    window of sigmas from ``slg_percent`` at ``shift``, where given."""
    given = {"scale": o.slg_scale, "start": o.slg_start, "stop": o.slg_stop}
    if o.slg_layers is None:
        details = {**given, "mode": o.slg_mode, "percent": o.slg_percent}
        return _off("slg", details, "skip layer guidance", "slg_layers (the blocks to skip) turns it on")
    if o.slg_mode == "uncond" and o.slg_scale is not None:
        raise ValueError("slg_scale is the third pass's: slg_mode uncond has none (it weakens the unconditional pass)")
    mode = {} if o.slg_mode is None else {"mode": o.slg_mode}
    window = {}
    if o.slg_percent is not None:
        if o.slg_start is not None or o.slg_stop is not None:
            raise ValueError("slg_percent is SLG's window of sigmas: give it or slg_start / slg_stop, not both")
        window = {"window": comfy_window(*_percents(o.slg_percent), shift)}
    return SkipLayers(_block_list(o.slg_layers), **_numbers("slg", given), **mode, **window)


def _percents(value: Any) -> tuple[float, float]:
    """``"0.01,0.15"`` or a pair of numbers -> (0.01, 0.15)."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        start, end = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"slg_percent is START,END (two numbers, such as '0.01,0.15'), got {value!r}") from None
    return start, end


def _block_list(value: Any) -> tuple[int, ...]:
    """``"9,10"``, ``9`` or ``[9, 10]`` -> (9, 10)."""
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"slg_layers are block indices such as '9,10', got {value!r}") from None
    return (value,) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)


def _nag(o: GenerateOptions) -> NagSettings | None:
    """NAG's settings where ``nag_scale`` turns it on (above 1), with the authors' defaults for the others."""
    given = {"tau": o.nag_tau, "alpha": o.nag_alpha}
    if o.nag_scale is None:
        return _off("nag", {**given, "negative_prompt": o.nag_negative_prompt}, "NAG", "nag_scale above 1 turns it on")
    if o.nag_scale == 1.0:  # off, as in the authors' pipeline (whatever its details say)
        return None
    if o.nag_negative_prompt is not None and not isinstance(o.nag_negative_prompt, str):
        raise ValueError("nag_negative_prompt must be a string (None: the run's negative prompt)")
    return NagSettings(**_numbers("nag", {"scale": o.nag_scale, **given}), negative_prompt=o.nag_negative_prompt)


def _riflex(value: Any) -> int:
    """RIFLEx's frequency index, a whole number >= 0 (its upper bound is the model's: ``models.rope.check_riflex``)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"riflex is the frame frequency to lower, a whole number such as 6 (0: off), got {value!r}")
    return value


def _enhance(value: Any) -> float:
    """Enhance-A-Video's weight, a number >= 0 (0: off)."""
    if value is None:
        return 0.0
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
    if not 0.0 <= number < float("inf"):
        raise ValueError(
            f"enhance_a_video is Enhance-A-Video's weight, a number >= 0 such as 2 (0: off), got {value!r}"
        )
    return number


def _off(prefix: str, details: dict[str, Any], what: str, how: str) -> None:
    """A feature left off: None, or an error naming the details given for it."""
    named = [f"{prefix}_{name}" for name, value in details.items() if value is not None]
    if named:
        raise ValueError(f"{named} set {what}'s details: {how}")
    return None


def _numbers(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """The values given (not None) as floats; anything but a number is an error naming its option."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{prefix}_{name} must be a number, got {value!r}")
    return {name: float(value) for name, value in values.items() if value is not None}


def _low_call(
    o: GenerateOptions,
    grid: SchedulerGrid | None,
    solver: str,
    steps: int,
    switch: int | None,
    shift: float,
    windowed: bool,
) -> tuple[float | None, Schedule | None]:
    """``low_noise_shift`` and the low-noise call's schedule at it: ComfyUI's scheduler ``o.scheduler`` for ``steps``
    laid out at that shift (as many steps as the first call's); (None, None) where it is not given or is ``shift``."""
    if o.low_noise_shift is None:
        return None, None
    low = _shift(o.low_noise_shift)
    if low == shift:
        return None, None
    if grid is None or o.scheduler is None:
        raise ValueError("low_noise_shift lays the low-noise call's steps out at its own shift: it needs scheduler")
    if switch is None or not 0 < switch < grid.schedule.num_steps:
        raise ValueError("low_noise_shift starts the low-noise call at switch_step: give one, 0 < switch_step < steps")
    if windowed:
        raise ValueError("low_noise_shift runs one window from noise: not with video, extend or a longer video")
    if o.slg_percent is not None:
        raise ValueError("slg_percent's window is one model's percent: not with low_noise_shift (each expert's)")
    floats = grid.schedule.timesteps.is_floating_point()
    schedule = comfy_schedule(o.scheduler, steps, low, floats, solver)
    if schedule.num_steps != grid.schedule.num_steps:
        raise ValueError(f"the {o.scheduler} steps at shifts {shift:g} and {low:g} differ in number; pick one shift")
    return low, schedule


def _image_fit(value: Any) -> str:
    if value is None:
        return "area"
    if value not in IMAGE_FITS:
        raise ValueError(f"image_fit is one of {', '.join(IMAGE_FITS)} (crop: ComfyUI's), got {value!r}")
    return value


def _cache(value: Any, solver: str, slg: bool) -> CacheSettings | EasyCacheSettings | None:
    settings = parse_cache(value)
    calls = get_solver(solver).model_calls
    if isinstance(settings, CacheSettings) and calls > 1:
        raise ValueError(f"magcache plans one model call a step: not with {solver} ({calls} model calls a step)")
    if isinstance(settings, CacheSettings) and get_solver(solver).uncond:
        raise ValueError(f"magcache plans the passes guidance runs: not with {solver} (its unconditional pass runs "
                         "at guidance 1 too); easycache is")  # fmt: skip
    if isinstance(settings, EasyCacheSettings) and slg:
        raise ValueError("easycache with skip layer guidance: not run (ComfyUI's EasyCache node records its third "
                         "pass as the prompt's)")  # fmt: skip
    return settings


def _image_scale(value: Any, image: Image.Image | None, fit: str) -> ImageScale | ImageResize | None:
    if value is None:
        return None
    scale = value if isinstance(value, (ImageScale, ImageResize)) else image_scale(value)
    if image is None:
        raise ValueError("image_scale scales the input image: give one")
    if fit != "crop":
        raise ValueError("image_scale runs ComfyUI's ImageScale (or KJNodes' resize) before ComfyUI's fit: give "
                         "image_fit crop")  # fmt: skip
    return scale


def _switch_step(value: Any, task: Task, steps: int) -> int | None:
    if value is None:
        return None
    if not task.is_moe:
        raise ValueError(f"switch_step: {task.name} has one DiT, so no switch between experts")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= steps:
        raise ValueError(f"switch_step is the number of high-noise steps, 0..{steps}, got {value!r}")
    return value


def _size(size: Any, given: list[Image.Image], task: Task, multiple: int | None) -> tuple[int, int]:
    """(width, height): as asked, else a given video's own (rounded down to ``multiple``), else the task's."""
    if size is not None:
        width, height = int(size[0]), int(size[1])
    else:
        width, height = video_size(given, multiple or task.size_multiple) if given else task.size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}*{height}")
    return width, height


def _windows(o: GenerateOptions, task: Task, frames: int | None, given: int | None) -> WindowPlan | None:
    """The windows of a video longer than one window, or of a given video of ``given`` frames continued. Without
    ``window_frames`` a window is as long as the published model's clips (81 or 121 frames: what it was trained on),
    also for a checkpoint that states fewer."""
    published = TASKS[task.name].frames if task.name in TASKS else task.frames
    window = published if o.window_frames is None else _frames(o.window_frames, "window_frames")
    anchor = 0.0 if o.window_anchor is None else float(o.window_anchor)
    return plan_windows(frames, window, o.window_overlap, o.prompt, anchor, given)


ASPECT_TOLERANCE = 0.01  # relative: a last image is resized to the first's size, so their shapes must agree


def _last_image(
    source: Any, first: Image.Image | None, task: Task, frames: int, crop: bool = False
) -> Image.Image | None:
    """The last frame, checked: a task that takes one, a first image beside it, the same aspect ratio (each is
    cropped to the size's aspect where ``crop``, as ComfyUI's WanFirstLastFrameToVideo fits them)."""
    if source is None:
        return None
    if not task.last_image:
        raise ValueError(f"{task.name} takes no last image (first-last frame is an i2v-A14B feature)")
    if first is None:
        raise ValueError("a last image needs a first image too (CLI: --image FIRST --last_image LAST)")
    if frames < 5:
        raise ValueError(f"a first and a last frame need at least 5 frames, got {frames}")
    last = load_image(source)
    a, b = first.width / first.height, last.width / last.height
    if abs(a / b - 1) > ASPECT_TOLERANCE and not crop:
        raise ValueError(
            f"the last image is {last.width}x{last.height} (aspect {b:.3f}) but the first is {first.width}x"
            f"{first.height} (aspect {a:.3f}): give a last image of the same aspect ratio (it is resized to the "
            "first's size)"
        )
    return last


def _extension(o: GenerateOptions, seed: int) -> Extension | None:
    if not o.extend_prompt:
        return None
    lang = o.prompt_extend_lang or LANGUAGES[0]
    if lang not in LANGUAGES:
        raise ValueError(f"unknown prompt_extend_lang {lang!r}; choose one of {list(LANGUAGES)}")
    extend_seed = seed if o.prompt_extend_seed is None else draw_seed(o.prompt_extend_seed, "prompt_extend_seed")
    return Extension(lang, extend_seed)


def _frames(frames: int, name: str = "frame_num") -> int:
    frames = int(frames)
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"{name} must be 4n+1 (1, 5, 9, ..., 81, ...), got {frames}")
    return frames


def _steps(steps: int) -> int:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"sample_steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    return steps


def _shift(shift: float) -> float:
    shift = float(shift)
    if not 0 < shift <= 100:
        raise ValueError(f"sample_shift must be in (0, 100], got {shift}")
    return shift


def _solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"unknown sample_solver {solver!r}; choose one of {sorted(SOLVERS)}")
    return solver


def _guide(value: float | tuple[float, ...] | list[float], task: Task) -> tuple[float, float] | float:
    values = [float(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    if len(values) not in (1, 2):
        raise ValueError(f"guide_scale takes one value, or two for (low-noise, high-noise); got {value!r}")
    if any(not 0.0 <= v <= MAX_GUIDE for v in values):
        raise ValueError(f"guide_scale must be between 0 and {MAX_GUIDE:g}, got {value!r}")
    if not task.is_moe:
        if len(values) == 2 and values[0] != values[1]:
            raise ValueError(f"{task.name} has one expert and takes one guide_scale, got {value!r}")
        return values[0]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _check_size(task: Task, width: int, height: int, multiple: int) -> None:
    if width % multiple or height % multiple:
        fit_w, fit_h = (max(multiple, n // multiple * multiple) for n in (width, height))
        raise ValueError(
            f"size {width}*{height} is not divisible by {multiple} (VAE stride x patch); try {fit_w}*{fit_h}"
        )
    if task.sizes and (width, height) not in task.sizes:
        trained = ", ".join(f"{w}*{h}" for w, h in task.sizes)
        log.warning(
            "size %d*%d is outside the sizes %s was trained at (%s); quality may suffer",
            width,
            height,
            task.name,
            trained,
        )


__all__ = [
    "DIFFUSERS_NAMES",
    "Extension",
    "GenerateOptions",
    "Request",
    "from_diffusers_names",
    "latent_frames",
    "resolve",
]
