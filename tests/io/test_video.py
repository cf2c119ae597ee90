import json
import os

import av
import numpy as np
import pytest
import torch
from PIL import Image

from wanflow.io.video import check_writable, from_uint8, save_video, to_uint8


def ramp_video(frames=5, h=32, w=48):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(3, frames, h, w, generator=gen) * 2.4 - 1.2  # values beyond [-1, 1] get clamped


def test_pixels_follow_the_reference_rule():
    video = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0]).view(1, 1, 1, 7).expand(3, 1, 1, 7)
    got = to_uint8(video)[0, 0, :, 0]
    want = [int((min(max(v, -1), 1) + 1) / 2 * 255) for v in (-1.5, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0)]
    assert got.tolist() == want  # truncation, not rounding: 0.0 -> 127


def test_mp4_decodes_with_frames_size_fps_and_metadata(tmp_path):
    path = save_video(ramp_video(), tmp_path / "out.mp4", fps=16, metadata={"prompt": "a red circle", "seed": 7})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 16
        assert container.metadata.get("prompt") == "a red circle" and container.metadata.get("seed") == "7"
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left


def test_list_metadata_is_stored_as_json(tmp_path):
    prompts = ["a red circle", "a blue 'square'"]
    path = save_video(ramp_video(), tmp_path / "out.mp4", metadata={"window_prompts": prompts, "steps": 20})
    with av.open(str(path)) as container:
        assert json.loads(container.metadata["window_prompts"]) == prompts and container.metadata["steps"] == "20"


def test_png_frames_are_lossless(tmp_path):
    video = ramp_video()
    folder = save_video(video, str(tmp_path / "frames") + "/")
    names = sorted(os.listdir(folder))
    assert names == [f"{i:05d}.png" for i in range(5)]
    for i, name in enumerate(names):
        assert np.array_equal(np.asarray(Image.open(folder / name)), to_uint8(video)[i])


def test_gif(tmp_path):
    path = save_video(ramp_video(), tmp_path / "out.gif", fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (48, 32)


def test_unwritable_and_unknown_outputs(tmp_path):
    with pytest.raises(ValueError, match="unsupported output"):
        check_writable(tmp_path / "out.avi")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not a writable folder"):
        check_writable(blocker / "out.mp4")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="even width"):
        save_video(ramp_video(w=47), tmp_path / "odd.mp4")
    assert os.listdir(tmp_path) == []


def test_best_output_size_matches_reference_examples_and_small_areas():
    from wanflow.io.image import best_output_size

    area = 1280 * 704  # wan22.md §7.4 worked sizes
    assert best_output_size(1920, 1080, 32, 32, area) == (1248, 704)
    assert best_output_size(1080, 1920, 32, 32, area) == (704, 1248)
    assert best_output_size(1024, 768, 32, 32, area) == (1088, 800)
    assert best_output_size(1000, 1000, 32, 32, area) == (960, 928)
    assert best_output_size(40, 24, 32, 32, 32 * 32) == (32, 32)  # under one step: one step, not a crash


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "frames/"])
def test_outputs_get_the_permissions_of_a_plain_open(tmp_path, name):
    old = os.umask(0o027)
    try:
        path = save_video(ramp_video(), f"{tmp_path}/{name}")
    finally:
        os.umask(old)
    if name.endswith("/"):
        assert path.stat().st_mode & 0o777 == 0o750
        assert all(f.stat().st_mode & 0o777 == 0o640 for f in path.iterdir())
    else:
        assert path.stat().st_mode & 0o777 == 0o640


def test_from_uint8_maps_pixels_to_the_vae_range_channels_first():
    frames = np.zeros((2, 5, 4, 6, 3), dtype=np.uint8)  # (N, F, H, W, 3)
    frames[0, 1, 2, 3] = (0, 255, 51)
    video = from_uint8(frames)
    assert video.shape == (2, 3, 5, 4, 6) and video.dtype == torch.float32
    assert video[0, :, 1, 2, 3].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])
    assert video[1].eq(-1.0).all()
