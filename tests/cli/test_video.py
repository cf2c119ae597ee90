"""``wanflow generate`` with a first and a last frame, longer videos and prompt extension: the flags reach the
pipeline, and bad input is one line with exit code 2."""

import os

import numpy as np
from PIL import Image

from wanflow.cli import main

FAST = ["--size", "64*64", "--frame_num", "9", "--sample_steps", "2", "--base_seed", "3"]


def run_main(capsys, *args):
    capsys.readouterr()
    try:
        code = main(["generate", *args])
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]


def refused(capsys, tmp_path, *args) -> str:
    """The one error line of a run that must be refused with exit code 2 and write nothing."""
    code, errors = run_main(capsys, "x", *args, "--save_file", str(tmp_path / "o.mp4"))
    assert code == 2 and len(errors) == 1, errors
    assert not [p for p in os.listdir(tmp_path) if p.startswith((".o.mp4", "o.mp4"))]
    return errors[0]


def picture(path, width, height, value):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return str(path)


def test_first_and_last_frame_from_the_command_line(tmp_path, capsys):
    first, last = picture(tmp_path / "a.png", 64, 64, 30), picture(tmp_path / "b.png", 128, 128, 220)
    out = tmp_path / "flf.gif"
    args = ["x", "--task", "i2v-A14B", "--image", first, "--last_image", last, *FAST, "--save_file", str(out)]
    assert run_main(capsys, *args)[0] == 0
    with Image.open(out) as im:
        assert im.n_frames == 9 and "last_image=True" in im.info["comment"].decode()


def test_a_last_image_of_another_aspect_ratio_is_one_line(tmp_path, capsys):
    first, last = picture(tmp_path / "a.png", 64, 64, 30), picture(tmp_path / "b.png", 96, 64, 220)
    line = refused(capsys, tmp_path, "--task", "i2v-A14B", "--image", first, "--last_image", last, *FAST)
    assert line.startswith("wanflow: error: the last image is 96x64 (aspect 1.500) but the first is 64x64")
