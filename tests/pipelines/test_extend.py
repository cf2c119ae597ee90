"""Continuing a given video (``extend``): the video is window 1 of a longer video, not made: the next window is held to
the latents of its frame 0 and its last overlap frames, encoded once at the window's size; its pixels are kept; the
plan, the command line and every refusal."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.pipelines.test_long_video import recorded
from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.pipelines.video_to_video import video_pixels
from wanflow.pipelines.windows import plan_windows
from wanflow.tasks import TASKS

FAST = dict(steps=2, seed=3, window_frames=9, window_overlap=4)


def frames_of(n: int, width: int = 64, height: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    return {task: WanPipeline.from_pretrained(write_official_checkpoint(root / task, task)) for task in TASKS}


@pytest.mark.parametrize("task", ["t2v-A14B", "ti2v-5B"])
def test_the_next_window_is_held_to_the_given_video_latents(tiny, task, monkeypatch):
    pipe, given = tiny[task], frames_of(13, 64, 64)
    windows, encoded = recorded(pipe, monkeypatch)
    video = pipe("a | b", extend=given, frames=21, **FAST)  # 4 latents given, then 1 + 1 + 1 per window: 2 windows
    assert video.frames.shape == (3, 21, 64, 64) and len(windows) == 2 and len(encoded) == 1
    assert [w[3] for w in windows] == ["a", "b"]  # the prompts are the new windows'
    assert video.metadata["windows"] == 3 and video.metadata["extended_video_frames"] == 13
    latents = pipe.encode_image(video_pixels(given, 64, 64))
    assert torch.equal(encoded[0], video_pixels(given, 64, 64))  # the video, once, at the window's size
    (frame0, _, out, _), (frame0_b, _, _, _) = windows[0], windows[1]
    assert torch.equal(frame0, torch.cat([latents[:, :, :1], latents[:, :, -1:]], dim=2))
    assert torch.equal(out[:, :, :2], frame0)  # held through every step
    assert torch.equal(frame0_b[:, :, 1:], out[:, :, -1:])  # and the window after continues from the new one
    assert np.array_equal(to_uint8(video.frames[:, :13]), np.stack([np.asarray(f) for f in given]))  # kept as given


def test_i2v_continues_from_the_video_first_frame(tiny, monkeypatch):
    pipe, given = tiny["i2v-A14B"], frames_of(9, 64, 64, seed=1)
    windows, encoded = recorded(pipe, monkeypatch)
    video = pipe("x", extend=given, **FAST)  # no frames: one window more (9 + 4)
    assert video.frames.shape[1] == 13 and len(windows) == 1
    assert len(encoded) == 2  # the window's [image, grey frames] for y, then the video
    assert torch.equal(encoded[0][:, :, :1], video_pixels(given[:1], 64, 64))  # its image is the video's first frame
    assert torch.equal(encoded[1], video_pixels(given, 64, 64))
    y = windows[0][1]
    latents = pipe.encode_image(encoded[1])
    assert torch.equal(y[:, 4:, 1:2], latents[:, :, -1:].to(y.dtype)) and y[0, :4, :2].eq(1).all()


def test_the_plan_of_an_extension():
    plan = plan_windows(None, 9, 4, "a", 0.0, given_frames=13)  # 4 latents given; windows of 3 with an overlap of 1
    assert (plan.first, plan.total, plan.spans()) == (4, 5, [(0, 4), (4, 5)])
    plan = plan_windows(25, 9, 4, "a | b | c", 0.0, given_frames=13)
    assert plan.spans() == [(0, 4), (4, 5), (5, 6), (6, 7)] and plan.prompts == ("a", "a", "b", "c")
    assert plan.metadata()["extended_video_frames"] == 13
    with pytest.raises(ValueError, match="adds no frame to the video's 13"):
        plan_windows(13, 9, 4, "a", 0.0, given_frames=13)
    with pytest.raises(ValueError, match="continuing it takes at least 5"):
        plan_windows(None, 9, 4, "a", 0.0, given_frames=1)
    with pytest.raises(ValueError, match="3 prompts for 2 new windows"):
        plan_windows(21, 9, 4, "a | b | c", 0.0, given_frames=13)


def test_refusals():
    given = frames_of(9)
    with pytest.raises(ValueError, match="extend continues a video, video= redoes one"):
        resolve(GenerateOptions("x", extend=given, video=given), TASKS["t2v-A14B"])
    with pytest.raises(ValueError, match=r"video not found: none\.mp4"):
        resolve(GenerateOptions("x", extend="none.mp4"), TASKS["t2v-A14B"])


def test_the_command_line_continues_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for i, frame in enumerate(frames_of(9, seed=2)):
        frame.save(tmp_path / "in" / f"{i:05d}.png")
    flags = [
        "--extend",
        "in/",
        "--window_frames",
        "9",
        "--sample_steps",
        "2",
        "--base_seed",
        "1",
        "--save_file",
        "out/",
    ]
    assert main(["generate", "a red circle moving right", *flags]) == 0
    out = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))])
    given = np.stack([np.asarray(f) for f in frames_of(9, seed=2)])
    assert out.shape == (13, 64, 64, 3) and np.array_equal(out[:9], given)
