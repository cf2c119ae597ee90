"""The Python API in diffusers' shape: its argument names are aliases of wanflow's (the built-in models give the very
frames of the native call), its output is diffusers' (``.frames`` in "np", "pt" or "pil"; checked against diffusers'
own ``WanPipeline`` given the same call), and ``torch_dtype``, ``generator``, ``enable_model_cpu_offload``,
``export_to_video`` and the built-in loader do what docs/python-api.md says."""

import io
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tests.pipelines.test_parity import ReferenceUniPC
from tests.tiny.checkpoint import write_both_layouts
from wanflow.data.shapes import combo_clips, first_frame
from wanflow.io.video import to_uint8
from wanflow.pipelines.diffusers_api import export_to_video
from wanflow.pipelines.pipeline import RuntimeOptions, Video, WanPipeline
from wanflow.pipelines.progress import Progress, TqdmProgress, default_progress
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def t2v():
    return WanPipeline.from_builtin("t2v-A14B")


@pytest.fixture(scope="module")
def ti2v():
    return WanPipeline.from_builtin("ti2v-5B")


def unit_range(frames: torch.Tensor) -> torch.Tensor:
    """wanflow's (3, F, H, W) in [-1, 1] -> [0, 1], written independently of the code under test."""
    return ((frames + 1) / 2).clamp(0, 1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_t2v_diffusers_call_gives_the_native_frames(t2v):
    native = t2v(PROMPT, size=(64, 64), frames=9, steps=6, guide_scale=(3.0, 5.0), seed=11)
    steps = []
    out = t2v(
        prompt=PROMPT,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=6,
        guidance_scale=5.0,
        guidance_scale_2=3.0,
        generator=seeded(11),
        output_type="pt",
        callback=steps.append,
    )
    assert isinstance(native, Video)  # the native call is unchanged
    assert out.frames.shape == (1, 9, 3, 64, 64) and out.seed == 11
    assert torch.equal(out.frames[0], unit_range(native.frames).permute(1, 0, 2, 3))
    # diffusers: guidance_scale is transformer's (the high-noise expert), guidance_scale_2 transformer_2's (low noise)
    assert {(s.expert, s.guide_scale) for s in steps} == {("high", 5.0), ("low", 3.0)}
    swapped = t2v(PROMPT, size=(64, 64), frames=9, steps=6, guide_scale=(5.0, 3.0), seed=11)
    assert not torch.equal(swapped.frames, native.frames)


def test_the_hub_use_this_model_snippet_runs_as_written(tmp_path):
    """The Hugging Face page's snippet for a diffusers Wan repository, with wanflow's import: ``DiffusionPipeline``,
    ``dtype=`` and ``device_map=`` at load, and a call that names only ``prompt=``, which is diffusers' call (its
    output); with an option of wanflow's own names it stays wanflow's."""
    from wanflow import DiffusionPipeline
    from wanflow.builtin import builtin_checkpoint

    pipe = DiffusionPipeline.from_pretrained(builtin_checkpoint("ti2v-5B"), dtype=torch.float32, device_map="cpu")
    out = pipe(prompt=PROMPT)
    output = out.frames[0]
    assert output.shape == (9, 64, 64, 3)
    with av.open(export_to_video(output, str(tmp_path / "output.mp4"))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9
    native = pipe(PROMPT, seed=out.seed)
    assert np.array_equal(output, unit_range(native.frames).permute(1, 2, 3, 0).numpy())
    assert isinstance(pipe(prompt=PROMPT, steps=2, seed=1), Video)  # wanflow's steps=: wanflow's call
    with pytest.raises(ValueError, match="given twice"):
        pipe(PROMPT, prompt=PROMPT)
    with pytest.raises(ValueError, match="device_map='balanced': a pipeline runs on one device here"):
        DiffusionPipeline.from_pretrained(builtin_checkpoint("ti2v-5B"), device_map="balanced")


def test_ti2v_with_an_image_diffusers_call_gives_the_native_frames(ti2v, tmp_path):
    clip = combo_clips(0, [("red", "circle", "right")], 1, 64, 64, 9)[0]
    image = Image.fromarray(first_frame(clip, 64, 64))
    native = ti2v(PROMPT, image=image, size=(64, 64), frames=9, steps=5, guide_scale=4.0, seed=5)
    out = ti2v(
        prompt=PROMPT,
        image=image,
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=5,
        guidance_scale=4.0,
        generator=seeded(5),
    )
    assert out.frames.shape == (1, 9, 64, 64, 3) and out.frames.dtype == np.float32  # diffusers' default: "np"
    assert np.array_equal(out.frames[0], unit_range(native.frames).permute(1, 2, 3, 0).numpy())
    # export_to_video writes the pixels Video.save writes (PNG frames: lossless)
    ours = export_to_video(out.frames[0], str(tmp_path / "exported") + "/")
    native.save(str(tmp_path / "saved") + "/")
    for i, frame in enumerate(to_uint8(native.frames)):
        assert np.array_equal(np.asarray(Image.open(f"{ours}/{i:05d}.png")), frame)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "saved" / f"{i:05d}.png")), frame)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """One tiny two-expert checkpoint in both layouts: ``official/`` and ``diffusers/``."""
    root = tmp_path_factory.mktemp("both")
    write_both_layouts(root, "t2v-A14B", seed=11)
    return root


@pytest.fixture(scope="module")
def ours_and_diffusers(tiny_root):
    """wanflow and diffusers' own ``WanPipeline`` on one tiny two-expert checkpoint, the reference's UniPC in both."""
    from diffusers import WanPipeline as DiffusersWanPipeline

    root = tiny_root
    theirs = DiffusersWanPipeline.from_pretrained(root / "diffusers")
    theirs.scheduler = ReferenceUniPC.from_config(theirs.scheduler.config, flow_shift=TASKS["t2v-A14B"].shift)
    theirs.set_progress_bar_config(disable=True)
    return WanPipeline.from_pretrained(root / "official"), theirs


DIFFUSERS_CALL = dict(
    negative_prompt=TASKS["t2v-A14B"].negative_prompt,  # diffusers' default is none, the reference's is this
    height=64,
    width=64,
    num_frames=9,
    num_inference_steps=8,  # 6 steps on the high-noise expert, 2 on the low-noise one
    guidance_scale=4.5,
    guidance_scale_2=3.0,
)


def test_i2v_diffusers_call_gives_the_native_frames():
    from wanflow import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_builtin("i2v-A14B")
    clip = combo_clips(0, [("blue", "square", "left")], 1, 64, 64, 9)[0]
    image = Image.fromarray(first_frame(clip, 64, 64))
    native = pipe(PROMPT, image=image, steps=4, guide_scale=(3.0, 4.0), seed=9)
    out = pipe(
        prompt=PROMPT,
        image=image,
        num_inference_steps=4,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        generator=seeded(9),
        output_type="pt",
    )
    assert torch.equal(out.frames[0], unit_range(native.frames).permute(1, 0, 2, 3))


def test_the_i2v_model_card_sizing_runs_as_written():
    """diffusers' I2V example sizes the video from the image with ``pipe.vae_scale_factor_spatial`` and
    ``pipe.transformer.config.patch_size``; here the same lines give the native call's frames."""
    from wanflow import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_builtin("i2v-A14B")
    clip = combo_clips(0, [("green", "triangle", "right")], 1, 64, 96, 9)[0]
    image = Image.fromarray(first_frame(clip, 64, 96))  # 96 wide, 64 high
    max_area = 64 * 64
    aspect_ratio = image.height / image.width
    mod_value = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
    height = round(np.sqrt(max_area * aspect_ratio)) // mod_value * mod_value
    width = round(np.sqrt(max_area / aspect_ratio)) // mod_value * mod_value
    assert (mod_value, width, height) == (16, 64, 48)
    image = image.resize((width, height))
    out = pipe(
        image=image, prompt=PROMPT, height=height, width=width, num_frames=9, num_inference_steps=3, generator=seeded(2)
    )
    native = pipe(PROMPT, image=image, size=(width, height), frames=9, steps=3, seed=2)
    assert out.frames.shape == (1, 9, 48, 64, 3)
    assert np.array_equal(out.frames[0], unit_range(native.frames).permute(1, 2, 3, 0).numpy())


def test_components_read_as_in_diffusers(ours_and_diffusers, ti2v):
    """``pipe.transformer`` (high noise), ``transformer_2`` (low noise), their and the VAE's ``config`` and the
    VAE's scale factors, as diffusers' pipeline has them for the same checkpoint."""
    ours, theirs = ours_and_diffusers
    assert ours.transformer is ours.experts["high"] and ours.transformer_2 is ours.experts["low"]
    assert ours.transformer.config.num_layers == len(ours.transformer.blocks)
    factors = (ours.vae_scale_factor_spatial, ours.vae_scale_factor_temporal)
    assert factors == (theirs.vae_scale_factor_spatial, theirs.vae_scale_factor_temporal) == (8, 4)
    for mine, their in [
        (ours.transformer, theirs.transformer),
        (ours.transformer_2, theirs.transformer_2),
        (ours.vae, theirs.vae),
    ]:
        shared = (set(mine.config) & set(their.config)) - {"_class_name"}
        assert len(shared) >= 12
        differ = {
            k: (mine.config[k], their.config[k]) for k in shared if _plain(mine.config[k]) != _plain(their.config[k])
        }
        assert not differ
    assert ti2v.transformer is ti2v.experts["dense"] and ti2v.transformer_2 is None

    assert (ti2v.vae_scale_factor_spatial, ti2v.vae_scale_factor_temporal) == (16, 4)  # the Wan 2.2 VAE


def test_compile_repeated_blocks_compiles_each_block_of_that_expert():
    pipe = WanPipeline.from_builtin("t2v-A14B")  # (its own: the compiled blocks are not run here)
    pipe.transformer_2.compile_repeated_blocks(dynamic=False)  # diffusers' regional compilation
    assert all(block._compiled_call_impl is not None for block in pipe.experts["low"].blocks)
    assert all(block._compiled_call_impl is None for block in pipe.experts["high"].blocks)


def _plain(value):
    """A config value as plain data (diffusers keeps some lists as tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def test_the_same_call_as_diffusers_gives_diffusers_frames(ours_and_diffusers):
    ours, theirs = ours_and_diffusers
    call = dict(prompt=PROMPT, **DIFFUSERS_CALL)
    a = ours(generator=seeded(3), **call).frames  # the seed's noise on the CPU is diffusers' draw from the generator
    with torch.no_grad():
        b = theirs(generator=seeded(3), **call).frames
    assert a.shape == b.shape == (1, 9, 64, 64, 3)
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.05


BATCHES = {  # each call's generators made afresh for each pipeline (diffusers draws from them)
    "two prompts, two videos each": lambda: dict(prompt=[PROMPT, "a blue square"], num_videos_per_prompt=2,
                                                 generator=seeded(3)),
    "a generator per video, pil": lambda: dict(prompt=[PROMPT, "a blue square"], generator=[seeded(1), seeded(2)],
                                               output_type="pil"),
    "three of one prompt, np": lambda: dict(prompt=PROMPT, num_videos_per_prompt=3, generator=seeded(4),
                                            output_type="np", num_frames=5),
}  # fmt: skip


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_a_batch_as_in_diffusers(ours_and_diffusers, batch):
    """diffusers' batch: a list of prompts, num_videos_per_prompt, one generator (one draw of the whole batch's noise)
    or one per video; here one call per video, with diffusers' order and noise."""
    ours, theirs = ours_and_diffusers
    call = {**DIFFUSERS_CALL, "num_inference_steps": 4, "output_type": "pt"}
    a = ours(**{**call, **BATCHES[batch]()}).frames
    with torch.no_grad():
        b = theirs(**{**call, **BATCHES[batch]()}).frames
    call.update(BATCHES[batch]())
    if call["output_type"] == "pil":
        a, b = (np.stack([np.stack([np.asarray(f) for f in video]) for video in x]).astype(np.float32) for x in (a, b))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1  # (rounded to 8 bits)
    else:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        count = len(call["prompt"]) * call.get("num_videos_per_prompt", 1) if isinstance(call["prompt"], list) else 3
        assert a.shape == b.shape and a.shape[0] == count
        assert (a - b).abs().max() <= 1e-4 and a.std() > 0.05
        assert all((a[0] - a[k]).abs().max() > 1e-2 for k in range(1, count))  # every video its own noise


def test_a_batch_of_prompt_embeds_as_in_diffusers(ours_and_diffusers):
    """``prompt_embeds`` and ``negative_prompt_embeds`` of several rows (encode_prompt's of a list of prompts) are a
    batch of those prompts, as in diffusers: one call per video, diffusers' order and noise; prompts beside them, or
    negative rows of another count, are errors."""
    ours, theirs = ours_and_diffusers
    with torch.no_grad():
        negatives = [DIFFUSERS_CALL["negative_prompt"]] * 2
        embeds = theirs.encode_prompt([PROMPT, "a blue square"], negatives, max_sequence_length=512)
    call = {**DIFFUSERS_CALL, "num_inference_steps": 4, "output_type": "pt"}
    del call["negative_prompt"]
    given = dict(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1])
    a = ours(generator=seeded(5), **given, **call).frames
    with torch.no_grad():
        b = theirs(generator=seeded(5), **given, **call).frames
    assert a.shape == b.shape and a.shape[0] == 2
    assert (a - b).abs().max() <= 1e-4 and (a[0] - a[1]).abs().max() > 1e-2
    # two videos of each row (diffusers repeats only the states it encodes itself): rows 0, 0, 1, 1 of one draw
    four = ours(generator=seeded(5), num_videos_per_prompt=2, **given, **call).frames
    assert four.shape[0] == 4 and (four[0] - four[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="pass a prompt or prompt_embeds, not both"):
        ours(PROMPT, **given, **call)
    with pytest.raises(ValueError, match=r"negative_prompt_embeds: one row per prompt_embeds row \(2\)"):
        ours(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1][:1], **call)


@pytest.mark.parametrize("scales", [(0.5, 3.0), (1.0, None), (4.5, 0.5)])
def test_guidance_of_one_or_less_as_in_diffusers(ours_and_diffusers, scales):
    """diffusers turns guidance off when guidance_scale <= 1 (guidance_scale_2 unread); a low-noise scale below 1
    under a guided high-noise expert is the formula's blend, in both."""
    ours, theirs = ours_and_diffusers
    call = {**DIFFUSERS_CALL, "prompt": PROMPT, "guidance_scale": scales[0], "guidance_scale_2": scales[1]}
    a = ours(generator=seeded(3), **call).frames
    with torch.no_grad():
        b = theirs(generator=seeded(3), **call).frames
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.05


def steering_callback(log: list):
    """A diffusers callback that reads the call's state, scales the latents after step 1, puts the negative prompt's
    states in place of the prompt's after step 2, and interrupts after step 5 (of 8, across the expert switch)."""

    def callback(pipe, i, t, kwargs):
        log.append((i, int(t), pipe.num_timesteps, int(pipe.current_timestep), sorted(kwargs)))
        if i == 1:
            kwargs["latents"] = kwargs["latents"] * 0.8
        if i == 2:
            kwargs["prompt_embeds"] = kwargs["negative_prompt_embeds"].clone()
        if i == 6:
            pipe._interrupt = True
        return kwargs

    return callback


def test_callback_on_step_end_and_latent_output_as_in_diffusers(ours_and_diffusers):
    ours, theirs = ours_and_diffusers
    inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    logs, outs = ([], []), []
    for pipe, log in zip((ours, theirs), logs, strict=True):
        with torch.no_grad():
            out = pipe(
                prompt=PROMPT,
                generator=seeded(3),
                output_type="latent",
                callback_on_step_end=steering_callback(log),
                callback_on_step_end_tensor_inputs=inputs,
                **DIFFUSERS_CALL,
            )
        outs.append(out.frames)
        assert ours.interrupt if pipe is ours else theirs.interrupt
    a, b = outs
    assert logs[0] == logs[1] and [entry[0] for entry in logs[0]] == list(range(7))
    assert a.shape == b.shape == (1, 16, 3, 8, 8) and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max() <= 1e-4
    plain = ours(prompt=PROMPT, generator=seeded(3), output_type="latent", **DIFFUSERS_CALL).frames
    assert (a - plain).abs().max() > 0.1  # the callback did steer the run
    assert ours.current_timestep is None and ours.num_timesteps == 8


def test_prompt_embeds_as_in_diffusers(ours_and_diffusers):
    ours, theirs = ours_and_diffusers
    negative = DIFFUSERS_CALL["negative_prompt"]
    with torch.no_grad():
        embeds, negative_embeds = theirs.encode_prompt(PROMPT, negative, max_sequence_length=512)
    call = {k: v for k, v in DIFFUSERS_CALL.items() if k != "negative_prompt"}
    given = dict(prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, generator=seeded(3), **call)
    a = ours(**given).frames
    with torch.no_grad():
        b = theirs(**given).frames
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.05
    # only the negative prompt's states given: the prompt is encoded, and wanflow's own states give its own frames
    text = ours(prompt=PROMPT, negative_prompt=negative, generator=seeded(3), output_type="pt", **call).frames
    ours_embeds = ours(
        PROMPT, negative_prompt_embeds=negative_embeds, generator=seeded(3), output_type="pt", **call
    ).frames
    assert (ours_embeds - text).abs().max() <= 1e-4


def test_encode_prompt_as_in_diffusers(ours_and_diffusers):
    ours, theirs = ours_and_diffusers
    negative = DIFFUSERS_CALL["negative_prompt"]
    with torch.no_grad():
        want = theirs.encode_prompt(PROMPT, negative, max_sequence_length=512)
    got = ours.encode_prompt(PROMPT, negative)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape == (1, 512, 32) and (a - b).abs().max() <= 1e-5 and b.abs().max() > 0.1
    only, none = ours.encode_prompt([PROMPT], do_classifier_free_guidance=False)
    assert none is None and torch.equal(only, got[0])
    task_negative = ours.encode_prompt(PROMPT)[1]  # left out: the task's negative prompt, as every wanflow call
    assert torch.equal(task_negative, got[1])
    with pytest.raises(ValueError, match="max_sequence_length=226"):
        ours.encode_prompt(PROMPT, max_sequence_length=226)
    with pytest.raises(ValueError, match="one prompt per call"):
        ours.encode_prompt([PROMPT, PROMPT])


def test_latent_output_decodes_to_the_frames(t2v):
    call = dict(num_inference_steps=4, generator=seeded(2))
    latents = t2v(PROMPT, output_type="latent", **call).frames
    (frames,) = t2v(PROMPT, output_type="pt", return_dict=False, **call)
    with torch.inference_mode():
        decoded = t2v.decode(latents, Progress())
    assert latents.shape == (1, 16, 3, 8, 8)
    assert torch.equal(unit_range(decoded).permute(1, 0, 2, 3)[None], frames)


def test_wanflow_prompt_states_give_the_prompt_frames(t2v):
    request = resolve(GenerateOptions(PROMPT), t2v.task, t2v.size_multiple)
    cond = t2v.encode_prompts(request, Progress())
    call = dict(num_inference_steps=3, generator=seeded(8), output_type="pt")
    from_text = t2v(PROMPT, **call).frames
    given = t2v(prompt_embeds=cond.context, negative_prompt_embeds=cond.context_null, **call).frames
    assert torch.equal(given, from_text)
    assert torch.equal(t2v(PROMPT, max_sequence_length=32, **call).frames, from_text)  # its text_len: accepted
    tokens = int(cond.context[0].abs().sum(-1).gt(0).sum())
    assert 0 < tokens < t2v.experts["high"].cfg.text_len
    trimmed = cond.context[0, :tokens]  # (tokens, dim) without the zero rows: padded again to text_len
    assert torch.equal(t2v(prompt_embeds=trimmed, negative_prompt_embeds=cond.context_null, **call).frames, from_text)


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        (dict(prompt=PROMPT, prompt_embeds=torch.zeros(1, 4, 64)), "a prompt or prompt_embeds"),
        (dict(), "a prompt or prompt_embeds"),
        (dict(prompt_embeds=torch.zeros(1, 4, 63)), r"\(1, tokens, 64\) with 1..32 tokens, got \(4, 63\)"),
        (dict(prompt_embeds=torch.zeros(4, 64), negative_prompt_embeds=torch.zeros(2, 4, 64)), "a batch of prompts"),
        (dict(prompt_embeds=torch.zeros(1, 33, 64)), "1..32 tokens"),
        (dict(prompt_embeds=torch.full((4, 64), float("nan"))), "NaN"),
        (dict(prompt=PROMPT, negative_prompt="x", negative_prompt_embeds=torch.zeros(4, 64)), "one of the two"),
        (dict(prompt_embeds=torch.zeros(4, 64), extend_prompt=True), "no prompt extension"),
        (dict(prompt=PROMPT, output_type="latent", frames=13, window_frames=9), "one-window video"),
        (
            dict(prompt=PROMPT, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]),
            r"has to be in \['latents', 'prompt_embeds', 'negative_prompt_embeds'\], but found \['noise'\]",
        ),
        (dict(prompt=PROMPT, callback_on_step_end=lambda *a: None), "must return a dict"),
        (dict(prompt=PROMPT, max_sequence_length=512), "the DiT reads 32 rows"),  # the built-in's text_len
        (dict(prompt=PROMPT, latents=torch.zeros(1, 1, 16, 3, 8, 8)), r"do not fit .* its noise is \(1, 16, 3, 8, 8\)"),
        (dict(prompt=PROMPT, latents=torch.zeros(1, 16, 3, 8, 8, dtype=torch.long)), "a float tensor"),
        (
            dict(prompt=PROMPT, callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"][:, :8]}),
            r"latents of \(1, 8, 3, 8, 8\); the run's are \(1, 16, 3, 8, 8\)",
        ),
    ],
)
def test_diffusers_call_arguments_clear_errors(t2v, keywords, match):
    with pytest.raises((ValueError, TypeError), match=match):
        t2v(num_inference_steps=2, **keywords)


def test_output_types_and_return_dict(t2v):
    call = dict(num_inference_steps=2, generator=seeded(4))
    pt = t2v(PROMPT, output_type="pt", **call).frames
    pil = t2v(PROMPT, output_type="pil", **call).frames
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (64, 64) and pil[0][0].mode == "RGB"
    want = (pt[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # diffusers rounds to PIL
    assert np.array_equal(np.stack([np.asarray(image) for image in pil[0]]), want)
    (frames,) = t2v(PROMPT, return_dict=False, **call)
    assert frames.shape == (1, 9, 64, 64, 3)


def test_a_bad_output_type_is_refused_before_any_work(t2v):
    steps = []
    with pytest.raises(ValueError, match=r"output_type 'mp4'.*\['np', 'pt', 'pil', 'latent'\]"):
        t2v(PROMPT, output_type="mp4", callback=steps.append)
    assert steps == []


def test_diffusers_names_map_onto_generate_options():
    generator = seeded(5)
    torch.randn(3, generator=generator)  # a used generator: its seed is what counts, not its state
    options = GenerateOptions.from_keywords(
        "x",
        height=480,
        width=832,
        num_frames=81,
        num_inference_steps=30,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        generator=generator,
        num_videos_per_prompt=1,
        negative_prompt="blurry",
    )
    assert options == GenerateOptions(
        "x", negative_prompt="blurry", size=(832, 480), frames=81, steps=30, guide_scale=(3.0, 4.0), seed=5,
        noise_device="cpu",  # (a CPU generator: diffusers draws its noise on the CPU, on any device)
    )  # fmt: skip
    assert GenerateOptions.from_keywords("x", guidance_scale=4.0, guidance_scale_2=None).guide_scale == 4.0
    assert GenerateOptions.from_keywords("x", guidance_scale=0.0, guidance_scale_2=5.0).guide_scale == 1.0


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        (dict(height=480), "height and width together"),
        (dict(size=(832, 480), height=480, width=832), "size is given twice"),
        (dict(guide_scale=3.0, guidance_scale=4.0), "guide_scale is given twice"),
        (dict(steps=4, num_inference_steps=4), "steps is given twice"),
        (dict(seed=1, generator=torch.Generator()), "seed is given twice"),
        (dict(guidance_scale_2=3.0), "needs guidance_scale"),
        (dict(generator=[torch.Generator()]), "one torch.Generator"),
        (dict(num_videos_per_prompt=2), "one video per call"),
        (dict(num_step=4), r"unknown generation options \['num_step'\].*num_inference_steps"),
    ],
)
def test_diffusers_names_clear_errors(keywords, match):
    with pytest.raises(ValueError, match=match):
        GenerateOptions.from_keywords("x", **keywords)


def test_generator_seed_gives_diffusers_initial_noise(t2v):
    from diffusers.utils.torch_utils import randn_tensor

    shape = (16, 3, 8, 8)
    want = randn_tensor((1, *shape), generator=seeded(21), device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(t2v.noise(shape, GenerateOptions.from_keywords("x", generator=seeded(21)).seed), want)


def test_torch_dtype_at_load():
    pipe = WanPipeline.from_builtin("ti2v-5B", torch_dtype=torch.bfloat16)
    assert pipe.runtime.dtype is torch.bfloat16
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.bfloat16}
    assert torch.bfloat16 in {p.dtype for p in pipe.experts["dense"].parameters()}
    with pytest.raises(ValueError, match="dtype is given twice"):
        RuntimeOptions.from_keywords(torch_dtype=torch.bfloat16, dtype="float32")
    with pytest.raises(ValueError, match=r"unknown runtime options \['variant'\]"):
        WanPipeline.from_builtin("ti2v-5B", variant="fp16")


def test_enable_model_cpu_offload_is_the_model_policy():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    assert pipe.offload == "resident"  # the CPU's default
    before = pipe(PROMPT, steps=3, seed=1)
    experts = pipe.experts
    pipe.enable_model_cpu_offload()
    assert pipe.offload == pipe.runtime.offload == pipe._placement.policy == "model"
    assert all(pipe.experts[name] is model for name, model in experts.items())
    assert torch.equal(pipe(PROMPT, steps=3, seed=1).frames, before.frames)
    assert pipe.to("cpu") is pipe and pipe._placement.policy == "model"  # a move keeps the chosen policy
    pipe.set_offload(None)
    assert pipe._placement.policy == "resident"
    with pytest.raises(ValueError, match="unknown offload policy"):
        pipe.set_offload("sequential")


def test_a_diffusers_vae_in_float32_beside_bfloat16_weights(tiny_root):
    """diffusers' own way to keep the VAE in float32: ``from_pretrained(..., vae=AutoencoderKLWan(float32),
    torch_dtype=torch.bfloat16)``. Its weights are used (converted exactly), in its dtype."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(tiny_root / "diffusers", subfolder="vae", torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(tiny_root / "official", vae=vae, torch_dtype=torch.bfloat16)
    same = WanPipeline.from_pretrained(tiny_root / "official", dtype="bfloat16", vae_dtype="float32")
    assert pipe.vae.dtype == torch.float32 and pipe.experts["high"].blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert list(pipe.vae.state_dict()) == list(same.vae.state_dict())
    assert all(torch.equal(v, same.vae.state_dict()[k]) for k, v in pipe.vae.state_dict().items())
    call = dict(size=(64, 64), frames=5, steps=2, seed=1)
    assert torch.equal(pipe(PROMPT, **call).frames, same(PROMPT, **call).frames)
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.5  # a changed VAE: its weights are the ones used
    changed = WanPipeline.from_pretrained(tiny_root / "official", vae=vae)
    assert changed.vae.dtype == torch.float32
    assert (changed(PROMPT, **call).frames - same(PROMPT, **call).frames).abs().max() > 0.2
    with pytest.raises(TypeError, match="AutoencoderKLWan or wanflow's WanVAE, got str"):
        WanPipeline.from_pretrained(tiny_root / "official", vae="vae.safetensors")


def test_enable_sequential_cpu_offload_is_the_block_policy():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    before = pipe(PROMPT, steps=3, seed=1)
    pipe.enable_sequential_cpu_offload()
    assert pipe.offload == pipe.runtime.offload == pipe._placement.policy == "block"
    assert all(hasattr(model, "block_stream") for model in pipe.experts.values())
    assert torch.equal(pipe(PROMPT, steps=3, seed=1).frames, before.frames)


def test_enable_vae_tiling_decodes_in_exact_tiles(monkeypatch):
    from wanflow.pipelines import pipeline as pipeline_module

    pipe = WanPipeline.from_builtin("t2v-A14B")
    whole = pipe(PROMPT, steps=2, seed=4).frames
    tiles = []
    real = pipeline_module.decode_tiled
    monkeypatch.setattr(
        pipeline_module, "decode_tiled", lambda vae, z, tile, f: tiles.append(tile) or real(vae, z, tile, f)
    )
    pipe.enable_vae_tiling(3)
    tiled = pipe(PROMPT, steps=2, seed=4).frames
    assert tiles == [3] and (tiled - whole).abs().max() <= 1e-5
    pipe.disable_vae_tiling()
    assert torch.equal(pipe(PROMPT, steps=2, seed=4).frames, whole) and tiles == [3]
    # diffusers' newer way, on the VAE: tiles in pixels (24 pixels: 3 latent pixels of the Wan 2.1 VAE)
    pipe.vae.enable_slicing()  # (one video per call: nothing to slice)
    pipe.vae.enable_tiling(tile_sample_min_height=24, tile_sample_min_width=32)
    assert torch.equal(pipe(PROMPT, steps=2, seed=4).frames, tiled) and tiles == [3, 3]
    pipe.vae.enable_tiling()
    assert pipe.runtime.vae_tile == 32
    pipe.vae.disable_tiling()
    assert torch.equal(pipe(PROMPT, steps=2, seed=4).frames, whole) and tiles == [3, 3]


def test_from_builtin_loads_the_shipped_model_of_a_task(ti2v):
    assert ti2v.task.name == "ti2v-5B" and ti2v.task.size == (64, 64)  # the built-in's own defaults
    with pytest.raises(ValueError, match="no built-in model for task 'x2v'"):
        WanPipeline.from_builtin("x2v")


def test_export_to_video_takes_diffusers_frames(t2v, tmp_path):
    out = t2v(PROMPT, num_inference_steps=2, generator=seeded(6), output_type="pt")
    path = export_to_video(out.frames[0], fps=8)  # (F, 3, H, W) in [0, 1]; a temporary .mp4 as in diffusers
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (64, 64, 8)
        assert sum(1 for _ in container.decode(stream)) == 9
    pil = t2v(PROMPT, num_inference_steps=2, generator=seeded(6), output_type="pil").frames[0]
    folder = export_to_video(pil, str(tmp_path / "pil") + "/")
    assert np.array_equal(np.asarray(Image.open(f"{folder}/00003.png")), np.asarray(pil[3]))
    with pytest.raises(ValueError, match=r"pass output.frames\[0\]"):
        export_to_video(t2v(PROMPT, num_inference_steps=1).frames, str(tmp_path / "x.mp4"))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_by_default_only_in_a_terminal(t2v, monkeypatch):
    terminal, pipe = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert isinstance(default_progress(), TqdmProgress)
    t2v(PROMPT, steps=2, seed=0)
    assert all(label in terminal.getvalue() for label in ("text encoding", "denoising", "decoding"))
    monkeypatch.setattr(sys, "stderr", pipe)
    assert type(default_progress()) is Progress
    t2v(PROMPT, steps=2, seed=0)
    assert pipe.getvalue() == ""


def test_set_progress_bar_config_as_in_diffusers(monkeypatch):
    pipe = WanPipeline.from_builtin("ti2v-5B")
    terminal, log = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    pipe.set_progress_bar_config(disable=True)  # a terminal, and yet no bars
    pipe(PROMPT, steps=2, seed=0)
    assert terminal.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", log)
    pipe.set_progress_bar_config(desc="working", ascii=True)  # bars with these options, even into a log
    pipe(PROMPT, steps=2, seed=0)
    assert log.getvalue().count("working") >= 3 and "█" not in log.getvalue()
    with pytest.raises(ValueError, match=r"unknown: \['colour_scheme', 'total'\]"):
        pipe.set_progress_bar_config(total=3, colour_scheme="x")


def test_a_batch_from_a_cpu_generator_draws_on_the_cpu():
    """One CPU generator for a batch: every video's noise is its row of one CPU draw (diffusers draws a CPU
    generator's noise on the CPU and moves it), on any device; the meta device has no generator of its own."""
    from wanflow.pipelines.diffusers_batch import batch_calls

    calls = batch_calls([PROMPT, "a blue square"], {"generator": seeded(4)}, None)
    noise = [options["latents"] for _, options in calls]
    assert [n.on for n in noise] == ["cpu", "cpu"]
    whole = torch.randn((2, 16, 2, 4, 4), generator=seeded(4))
    for k, n in enumerate(noise):
        assert torch.equal(n.draw((16, 2, 4, 4), torch.device("cpu")), whole[k : k + 1])
        assert n.draw((16, 2, 4, 4), torch.device("meta")).device.type == "meta"
