"""The data folder of ``train-lora``: every unusable file named in one error, clips sized and cut to 4n+1 frames,
and the latents and text states cached beside the data, keyed by content and settings."""

import numpy as np
import pytest
from PIL import Image

from tests.training.lora_helpers import bar_clip, settings, write_data
from wanflow.cli import main
from wanflow.io.video import save_video
from wanflow.training import lora_cache
from wanflow.training.lora import train_lora
from wanflow.training.lora_data import CACHE_DIR, ClipShape, DataError, Item, load_item


def test_every_bad_file_is_named_once_with_its_reason(tmp_path, ckpt):
    data = write_data(tmp_path / "data", clips=1)
    save_video(np.zeros((9, 32, 32, 3), np.uint8), data / "nocaption.mp4", fps=8)
    save_video(np.zeros((3, 32, 32, 3), np.uint8), data / "short.mp4", fps=8)
    (data / "short.txt").write_text("too short")
    (data / "broken.mp4").write_bytes(b"not a video")
    (data / "broken.txt").write_text("unreadable")
    (data / "still.png").write_bytes(b"not an image")
    (data / "still.txt").write_text("unreadable image")
    (data / "empty.mp4").write_bytes(b"")
    (data / "empty.txt").write_text("   \n")
    with pytest.raises(DataError) as error:
        train_lora(settings(data, tmp_path / "out/x", ckpt), progress=False)
    lines = str(error.value).splitlines()
    assert "5 of 6 files cannot be used" in lines[0]
    reasons = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert sorted(reasons) == ["broken.mp4", "empty.mp4", "nocaption.mp4", "short.mp4", "still.png"]
    assert "nocaption.txt is missing" in reasons["nocaption.mp4"]
    assert "empty.txt is empty" in reasons["empty.mp4"]
    assert "3 frames, fewer than the 5" in reasons["short.mp4"]
    assert "cannot read the video" in reasons["broken.mp4"] and "cannot" in reasons["still.png"]
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_an_empty_folder_is_one_line_and_exit_code_2(tmp_path, ckpt, capsys):
    (tmp_path / "data").mkdir()
    argv = ["train-lora", str(tmp_path / "data"), "--task", "t2v-A14B", "--ckpt_dir", str(ckpt)]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wanflow: error: ") and "holds no clips" in err and err.count("\n") == 1


def test_clips_are_resized_centre_cropped_and_cut_into_evenly_spaced_windows(tmp_path):
    frames = np.zeros((13, 40, 80, 3), np.uint8)
    frames[:, :, 30:50] = 255  # a white centre column, 20 of 80 wide
    for f in range(13):
        frames[f, 0, 0, 0] = 20 * f  # a frame counter in the red corner pixel (cropped away below)
    save_video(frames, tmp_path / "c.mp4", fps=8)
    windows = load_item(Item(tmp_path / "c.mp4", "x"), ClipShape(16, 16, 5, windows=3))
    assert windows.shape == (3, 5, 16, 16, 3)
    # cover: 80x40 -> 32x16, then the centre 16 columns: the white column becomes 8 columns in the middle
    row = windows[0, 0, 8, :, 1].astype(int)
    assert (row[4:12] > 200).all() and (row[:3] < 60).all() and (row[13:] < 60).all()
    image = Image.fromarray(bar_clip(0)[0])
    image.save(tmp_path / "i.png")
    assert load_item(Item(tmp_path / "i.png", "x"), ClipShape(16, 16, 5)).shape == (1, 1, 16, 16, 3)
    with pytest.raises(ValueError, match="4n"):
        ClipShape(16, 16, 6)


def cache_files(data):
    return sorted(p.name for p in (data / CACHE_DIR).iterdir())


def test_latents_and_text_states_are_cached_by_content_and_settings(tmp_path, ckpt, monkeypatch):
    data = write_data(tmp_path / "data", clips=2)
    train_lora(settings(data, tmp_path / "a/x", ckpt, steps=1), progress=False)
    first = cache_files(data)
    assert len(first) == 4  # two clips' latents, two captions' states

    def no_encoder(self):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(lora_cache.Encoders, "vae", no_encoder)
    monkeypatch.setattr(lora_cache.Encoders, "text", no_encoder)
    train_lora(settings(data, tmp_path / "b/x", ckpt, steps=1), progress=False)  # all from the cache
    monkeypatch.undo()
    assert cache_files(data) == first
    (data / "clip0.txt").write_text("another caption")  # new text: one new text entry
    save_video(bar_clip(5), data / "clip1.mp4", fps=8)  # new bytes: one new latent entry
    train_lora(settings(data, tmp_path / "c/x", ckpt, steps=1), progress=False)
    assert len(cache_files(data)) == 6
    train_lora(settings(data, tmp_path / "d/x", ckpt, steps=1, size=(48, 32)), progress=False)  # new size
    assert len(cache_files(data)) == 8
