"""``wanflow generate`` with a first and a last frame, longer videos and prompt extension: the flags reach the
pipeline, and bad input is one line with exit code 2."""

import json

import numpy as np
from PIL import Image

from tests.cli.test_hardening import refused, run_main
from tests.tiny.chat import write_chat_model
from wanflow.cli import main

FAST = ["--size", "64*64", "--frame_num", "9", "--sample_steps", "2", "--base_seed", "3"]


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


def test_prompt_extension_from_the_command_line(tmp_path, capsys):
    chat = write_chat_model(tmp_path / "chat")
    out = tmp_path / "x.gif"
    extend = ["--use_prompt_extend", "--prompt_extend_model", str(chat), "--prompt_extend_target_lang", "en"]
    code = main(["generate", "a red ball", *extend, "--prompt_extend_seed", "4", *FAST, "--save_file", str(out)])
    assert code == 0
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("extended prompt")]
    assert len(printed) == 1 and printed[0].startswith(f"extended prompt (local:{chat}): ")
    with Image.open(out) as im:
        comment = im.info["comment"].decode()
    assert "original_prompt=a red ball" in comment and "prompt_extended=True" in comment
    assert f"prompt={printed[0].split(': ', 1)[1]}" in comment


def test_a_prompt_extension_model_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = refused(capsys, tmp_path, "--use_prompt_extend", "--prompt_extend_model", str(tmp_path / "empty"), *FAST)
    assert line.startswith(f"wanflow: error: cannot load the prompt extension model '{tmp_path / 'empty'}'")


def test_a_longer_video_from_the_command_line_with_a_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\n\na red circle moving down\n")
    out = tmp_path / "long.gif"
    args = ["--prompt_file", str(prompts), "--frame_num", "17", "--window_frames", "9", "--window_overlap", "4"]
    assert run_main(capsys, *args, "--sample_steps", "2", "--window_anchor", "0.5", "--save_file", str(out))[0] == 0
    with Image.open(out) as im:
        comment = im.info["comment"].decode()
        assert im.n_frames == 17
    assert "windows=3" in comment and "window_anchor=0.5" in comment
    prompts = ["a red circle moving right", "a red circle moving down", "a red circle moving down"]
    assert f"window_prompts={json.dumps(prompts)}" in comment  # JSON, readable back


def test_a_window_overlap_larger_than_the_window_is_one_line(tmp_path, capsys):
    args = ["--frame_num", "33", "--window_frames", "9", "--window_overlap", "12", "--sample_steps", "2"]
    line = refused(capsys, tmp_path, *args)
    expected = "window_overlap 12 leaves no new frame in a window of 9 frames: use at most 4, or longer windows"
    assert line == f"wanflow: error: {expected}"


def test_an_extension_model_without_use_prompt_extend_is_one_line(tmp_path, capsys):
    line = refused(capsys, tmp_path, "--prompt_extend_model", str(tmp_path), *FAST)
    assert line == (
        "wanflow: error: --prompt_extend_model is used with --use_prompt_extend: add it, or leave the model out"
    )


def test_switch_step_from_the_command_line_and_in_the_metadata(tmp_path, capsys):
    out = tmp_path / "switch.gif"
    assert run_main(capsys, "a red circle", *FAST, "--switch_step", "1", "--save_file", str(out))[0] == 0
    with Image.open(out) as im:
        assert "switch_step=1" in im.info["comment"].decode()
    line = refused(capsys, tmp_path, "--task", "ti2v-5B", "--switch_step", "1", *FAST)
    assert "ti2v-5B has one DiT, so no switch between experts" in line
