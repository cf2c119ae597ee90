"""Video to video (``pipelines.video_to_video``): the frames of diffusers' own ``WanVideoToVideoPipeline`` given the
same call on a tiny checkpoint (one transformer for both experts; and two experts at a strength that leaves the
low-noise one only, which diffusers' pipeline is given as its one transformer); strength 1 on a grid that starts at
sigma 1 is the plain run of every task; the sources a video is read from; the request's frames, size and every
refusal."""

import numpy as np
import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline
from diffusers import WanTransformer3DModel, WanVideoToVideoPipeline
from PIL import Image

from tests.pipelines.test_long_video import recorded
from tests.pipelines.test_parity import ReferenceUniPC
from tests.tiny.checkpoint import write_both_layouts
from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import save_video, to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.pipelines.video_to_video import video_pixels
from wanflow.runtime.step_cache import CacheSettings
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


def source_video(frames: int, width: int, height: int, seed: int = 0, grain: float = 0.2) -> list[Image.Image]:
    """Random frames: a moving colour gradient plus ``grain`` of noise, 8-bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, width)[None, None, :, None]
    t = torch.linspace(0, 1, frames)[:, None, None, None]
    base = (x + t + torch.rand(frames, 1, 1, 3, generator=g)) % 1.0
    grains = torch.rand(frames, height, width, 3, generator=g)
    pixels = (1 - grain) * base.expand(frames, height, width, 3) + grain * grains
    return [Image.fromarray(f) for f in (pixels * 255).round().to(torch.uint8).numpy()]


def write_pngs(video: list[Image.Image], folder) -> None:
    """The frames as a PNG folder, as ``--save_file DIR/`` names them."""
    folder.mkdir()
    for i, frame in enumerate(video):
        frame.save(folder / f"{i:05d}.png")


def diffusers_v2v(folder, task: str, transformer: str = "transformer") -> WanVideoToVideoPipeline:
    parts = DiffusersWanPipeline.from_pretrained(folder)
    pipe = WanVideoToVideoPipeline(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        transformer=getattr(parts, transformer),
        vae=parts.vae,
        scheduler=ReferenceUniPC.from_config(parts.scheduler.config, flow_shift=TASKS[task].shift),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_frames(pipe, video, strength: float, steps: int, scale: float) -> np.ndarray:
    w, h = video[0].size
    call = dict(height=h, width=w, num_inference_steps=steps, guidance_scale=scale, strength=strength)
    call["negative_prompt"] = TASKS["t2v-A14B"].negative_prompt  # diffusers' default is none, the reference's this
    with torch.no_grad():
        out = pipe(video=video, prompt=PROMPT, generator=torch.Generator().manual_seed(7), output_type="np", **call)
    return out.frames[0]


def ours_frames(pipe: WanPipeline, video, strength: float, steps: int, scale, log: list | None = None) -> np.ndarray:
    v = pipe(PROMPT, video=video, strength=strength, steps=steps, guide_scale=scale, seed=7, callback=log.append
             if log is not None else None)  # fmt: skip
    return ((v.frames + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).numpy()  # diffusers' "np": (F, H, W, 3) in [0, 1]


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2v-a14b")
    write_both_layouts(root, "t2v-A14B", seed=22)
    return root


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_one_transformer_gives_diffusers_video_to_video_frames(a14b, strength):
    # diffusers' pipeline has one transformer: wanflow is given that module for both experts (its Wan 2.1 VAE: the
    # pipeline sizes its noise with the Wan 2.1 VAE's factors, so the TI2V-5B VAE does not run there)
    module = WanTransformer3DModel.from_pretrained(a14b / "diffusers", subfolder="transformer")
    ours = WanPipeline.from_pretrained(a14b / "official", transformer=module, transformer_2=module)
    video = source_video(9, 64, 64)
    a = ours_frames(ours, video, strength, 10, 4.0)
    b = diffusers_frames(diffusers_v2v(a14b / "diffusers", "t2v-A14B"), video, strength, 10, 4.0)
    assert a.shape == b.shape == (9, 64, 64, 3)
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.05
    given = np.stack([np.asarray(f) for f in video]) / 255.0
    assert np.abs(a - given).mean() > 0.01  # the run changed the video


def test_a14b_at_a_low_strength_runs_the_low_noise_expert_only_as_diffusers_with_it(a14b):
    # shift 12, 20 steps: the last 7 (strength 0.35) are below the boundary (t < 875): diffusers' pipeline, which has
    # one transformer, given the low-noise expert runs the same steps
    video, steps = source_video(9, 64, 64, seed=1), []
    a = ours_frames(WanPipeline.from_pretrained(a14b / "official"), video, 0.35, 20, (3.0, 4.5), steps)
    b = diffusers_frames(diffusers_v2v(a14b / "diffusers", "t2v-A14B", "transformer_2"), video, 0.35, 20, 3.0)
    assert [(s.index, s.total, s.expert, s.guide_scale) for s in steps] == [(i, 7, "low", 3.0) for i in range(7)]
    assert np.abs(a - b).max() <= 1e-4 and a.std() > 0.05


@pytest.mark.parametrize("task", ["t2v-A14B", "i2v-A14B", "ti2v-5B"])
def test_strength_one_on_a_grid_from_sigma_one_is_the_plain_run(task):
    pipe = WanPipeline.from_builtin(task)  # euler's grid starts at sigma 1: the video's share is 0 exactly
    image = dict(image=source_video(1, 64, 64, seed=5)[0]) if task != "t2v-A14B" else {}
    video = source_video(9, 64, 64, seed=2)
    call = dict(steps=6, seed=3, solver="euler", size=(64, 64), frames=9, **image)
    plain = pipe("a blue square moving left", **call).frames
    from_video = pipe("a blue square moving left", video=video, strength=1.0, **call)
    half = pipe("a blue square moving left", video=video, strength=0.5, **call)
    assert torch.equal(from_video.frames, plain)
    assert (half.frames - plain).abs().max() > 0.05
    assert from_video.metadata["video_strength"] == 1.0 and "video_strength" not in pipe("x", steps=1, **image).metadata


def test_every_source_gives_the_same_frames(tmp_path):
    video = source_video(5, 32, 16, seed=3)
    pixels = np.stack([np.asarray(f) for f in video])
    write_pngs(video, tmp_path / "frames")
    sources = {
        "PIL": video,
        "uint8 array": pixels,
        "uint8 tensor": torch.from_numpy(pixels),
        "float in [0, 1]": pixels / 255.0,
        "PNG folder": tmp_path / "frames",
    }
    for name, source in sources.items():
        read = np.stack([np.asarray(f) for f in read_frames(source)])
        assert np.array_equal(read, pixels), name
    smooth = np.stack([np.asarray(f) for f in source_video(5, 64, 32, seed=3, grain=0.0)])
    mp4 = save_video(torch.from_numpy(smooth).permute(3, 0, 1, 2).float() / 127.5 - 1, tmp_path / "a.mp4", fps=16)
    read = np.stack([np.asarray(f) for f in read_frames(mp4)])
    assert read.shape == smooth.shape and np.abs(read.astype(float) - smooth).mean() < 6  # H.264 loses ~4 levels here
    assert np.abs(read.astype(float) - smooth[::-1]).mean() > 20  # (in their order)


def test_a_video_and_diffusers_output_are_read_as_their_frames():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    made = pipe(PROMPT, steps=2, seed=1)
    assert np.array_equal(np.stack([np.asarray(f) for f in read_frames(made)]), to_uint8(made.frames))
    out = pipe(prompt=PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(1))  # diffusers' "np"
    read = np.stack([np.asarray(f) for f in read_frames(out)])
    assert np.abs(read.astype(int) - to_uint8(made.frames)).max() <= 1  # rounded here, truncated by to_uint8


def resolved(**options):
    return resolve(GenerateOptions(PROMPT, **options), TASKS["t2v-A14B"])


def test_the_request_takes_the_video_frames_and_size_unless_told():
    video = source_video(11, 70, 50)
    r = resolved(video=video)
    assert (r.frames, len(r.video), r.size, r.strength) == (9, 9, (64, 48), 0.8)  # 4n+1 frames; multiples of 16
    r = resolved(video=video, frames=5, size=(32, 32), strength=0.5)
    assert (r.frames, len(r.video), r.size, r.strength) == (5, 5, (32, 32), 0.5)
    assert r.video[0] is not video[0] and np.array_equal(np.asarray(r.video[4]), np.asarray(video[4]))


def test_the_frames_given_are_resized_and_cropped_to_the_size():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    wide = source_video(5, 128, 64, seed=4)
    seen = []
    pipe.encode_image = lambda pixels: seen.append(pixels) or torch.zeros(1, 16, 2, 8, 8)  # what the VAE is given
    pipe(PROMPT, video=wide, size=(64, 64), steps=2, seed=1)
    centre = np.stack([np.asarray(f.resize((128, 64), Image.LANCZOS).crop((32, 0, 96, 64))) for f in wide])
    assert seen[0].shape == (1, 3, 5, 64, 64)
    assert torch.equal(seen[0][0], torch.from_numpy(centre).permute(3, 0, 1, 2).float() / 127.5 - 1)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(strength=0.5), "strength is how much of a given video to redo"),
        (dict(video="missing.mp4"), "video not found: missing.mp4"),
        (dict(video=[1, 2, 3]), "video must be a path, PIL images"),
        (dict(video=np.zeros((3, 8, 8), np.uint8)), r"of shape \(3, 8, 8\)"),
        (dict(video="VIDEO", strength=0.0), r"strength must be in \(0, 1\]"),
        (dict(video="VIDEO", strength=1.5), r"strength must be in \(0, 1\]"),
        (dict(video="VIDEO", frames=13), "the video has 9 frames; frame_num 13 needs that many"),
        (dict(video="SMALL"), "the video is 8x8; this model needs at least 16x16"),
    ],
)
def test_refusals(options, match):
    stand_ins = {"VIDEO": source_video(9, 32, 32), "LONG": source_video(17, 32, 32), "SMALL": source_video(1, 8, 8)}
    options = {k: stand_ins.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ValueError, match=match):
        resolved(**options)


def test_a_strength_that_runs_no_step_and_latents_beside_a_video_are_refused():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    video = source_video(5, 64, 64)
    with pytest.raises(ValueError, match=r"strength 0\.05 of 10 steps runs no step: use at least 0\.1"):
        pipe(PROMPT, video=video, strength=0.05, steps=10)
    with pytest.raises(ValueError, match="latents= replaces the noise; with video= the run starts from the video"):
        pipe(PROMPT, video=video, latents=torch.zeros(1, 16, 2, 8, 8))


def test_the_command_line_reads_the_video_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    video = source_video(9, 64, 64, seed=5)
    write_pngs(video, tmp_path / "in")
    flags = ["--video", "in/", "--strength", "0.5", "--sample_steps", "6", "--base_seed", "4", "--save_file", "out/"]
    assert main(["generate", PROMPT, *flags]) == 0
    cli = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))])
    api = WanPipeline.from_builtin("t2v-A14B")(PROMPT, video=video, strength=0.5, steps=6, seed=4)
    assert np.array_equal(cli, to_uint8(api.frames))


def test_the_step_cache_reads_its_curve_where_the_steps_are_in_the_whole_run():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    video, call = source_video(9, 64, 64, seed=6), dict(steps=20, seed=2, strength=0.7)
    plain = pipe(PROMPT, video=video, **call).frames
    assert torch.equal(pipe(PROMPT, video=video, cache="magcache:0", **call).frames, plain)  # threshold 0: no reuse
    read = []
    cache = pipe.step_cache(CacheSettings(0.5))
    cache.curve = ReadCurve(cache.curve, read)
    cached = pipe(PROMPT, video=video, hooks=[cache], **call).frames
    assert read == [(6 + i, 20) for i in range(14)]  # the last 14 of 20 steps: positions 6..19 of the 20-step curve
    assert cache.reused_steps > 0 and not torch.equal(cached, plain)


class ReadCurve:
    """A calibration curve that records where it is read."""

    def __init__(self, curve, read: list):
        self.curve, self.read = curve, read

    def at(self, index: int, total: int):
        self.read.append((index, total))
        return self.curve.at(index, total)


@pytest.mark.parametrize("task", ["t2v-A14B", "i2v-A14B"])
def test_a_longer_video_runs_window_by_window_from_its_own_latents(task, monkeypatch):
    pipe = WanPipeline.from_builtin(task)
    image = dict(image=source_video(1, 64, 64, seed=5)[0]) if task == "i2v-A14B" else {}
    video = source_video(17, 64, 64, seed=7)  # 5 latents: windows [0, 3), [3, 4), [4, 5) with an overlap of 1
    call = dict(steps=6, seed=3, solver="euler", window_frames=9, **image)
    plain = pipe("a blue square moving left", frames=17, **call).frames
    assert torch.equal(pipe("a blue square moving left", video=video, strength=1.0, **call).frames, plain)
    latents = pipe.encode_image(video_pixels(video, 64, 64))
    _, encoded = recorded(pipe, monkeypatch)
    out = pipe("a blue square moving left", video=video, strength=0.5, **call)
    assert out.frames.shape == (3, 17, 64, 64) and out.metadata["windows"] == 3
    assert sum(clip.shape[2] == 17 for clip in encoded) == 1  # the whole video, once
    starts = recorded.starts
    assert torch.equal(starts[0], latents[:, :, :3])
    assert torch.equal(starts[1], latents[:, :, [0, 2, 3]]) and torch.equal(starts[2], latents[:, :, [0, 3, 4]])
    assert (out.frames - plain).abs().max() > 0.05
