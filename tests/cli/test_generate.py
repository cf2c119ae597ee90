"""``wanflow generate``: reference flags, outputs, and one-line errors with exit code 2."""

import functools
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main

FAST = ["--size", "64*64", "--frame_num", "9", "--sample_steps", "3"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return {task: write_official_checkpoint(tmp_path_factory.mktemp(task), task) for task in ("t2v-A14B", "i2v-A14B")}


def test_writes_mp4_with_frames_size_fps(ckpts, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code = main(
        [
            "generate",
            "a red circle moving right",
            "--ckpt_dir",
            str(ckpts["t2v-A14B"]),
            *FAST,
            "--base_seed",
            "5",
            "--save-file",
            str(out),
            "--sample-guide-scale",
            "3,4",
        ]
    )
    assert code == 0
    assert "saved" in capsys.readouterr().out
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 64)
        assert stream.average_rate == 16
        assert container.metadata["prompt"] == "a red circle moving right"
        assert container.metadata["seed"] == "5" and container.metadata["task"] == "t2v-A14B"
        assert container.metadata["guide_scale"] == "[3.0, 4.0]"  # JSON (io.video.metadata_text)


def test_prompt_flag_and_png_frames(ckpts, tmp_path):
    out = str(tmp_path / "frames") + "/"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a cat",
                "--ckpt-dir",
                str(ckpts["t2v-A14B"]),
                *FAST,
                "--save_file",
                out,
                "--dtype",
                "float32",
                "--sample_solver",
                "dpm++",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(out)) == [f"{i:05d}.png" for i in range(9)]


def run_cli(*args):
    """A real process: the exit code and stderr lines as a user sees them."""
    done = subprocess.run([sys.executable, "-m", "wanflow", "generate", *args], capture_output=True, text=True)
    return done.returncode, done.stderr.strip().splitlines()


def run_main(capsys, *args):
    """In-process (fast) equivalent of ``run_cli``."""
    capsys.readouterr()
    try:
        code = main(["generate", *args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frame_num", "8"], "frame_num must be 4n+1"),
        (["--size", "60*64"], "not divisible by 16"),
        (["--size", "big"], "size must look like WIDTH*HEIGHT"),
        (["--sample_steps", "0"], "sample_steps must be an integer from 1"),
        (["--sample_guide_scale", "500"], "guide_scale must be between 0 and 100"),
        (["--task", "t2v-1.3B"], "invalid choice"),
        (["--save_file", "/proc/nope/out.mp4"], "cannot write"),
        (["--save_file", "out.avi"], "unsupported output"),
        (["--vae_tile", "-1"], "expected a whole number >= 0"),
        (["--base_seed", str(2**64)], "seed must be at most 2**64 - 1"),
    ],
)
def test_bad_input_one_line_exit_2(ckpts, tmp_path, capsys, args, message):
    base = ["x", "--ckpt_dir", str(ckpts["t2v-A14B"]), *FAST, "--save_file", str(tmp_path / "o.mp4")]
    code, lines = run_main(capsys, *base, *args)
    assert code == 2
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and message in errors[0], lines
    assert not (tmp_path / "o.mp4").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_process_exit_code_and_single_line(ckpts, tmp_path):
    assert run_cli("x", "--ckpt_dir", str(tmp_path / "missing"), "--save_file", str(tmp_path / "o.mp4")) == (
        2,
        [f"wanflow: error: checkpoint folder not found: {tmp_path / 'missing'}"],
    )
    code, lines = run_cli("x", "--frame_num", "8", "--ckpt_dir", str(ckpts["t2v-A14B"]))  # before any loading
    assert code == 2 and lines == ["wanflow: error: frame_num must be 4n+1 (1, 5, 9, ..., 81, ...), got 8"]


def test_checkpoint_and_image_errors(ckpts, tmp_path, capsys):
    out = ["--save_file", str(tmp_path / "o.mp4")]
    run_cli = functools.partial(run_main, capsys)
    code, lines = run_cli("x", "--ckpt_dir", str(tmp_path), *out)
    assert code == 2 and "not a Wan checkpoint folder" in lines[-1]
    code, lines = run_cli("x", "--task", "i2v-A14B", "--ckpt_dir", str(ckpts["i2v-A14B"]), *FAST, *out)
    assert code == 2 and lines[-1] == "wanflow: error: i2v-A14B needs an input image: --image PATH"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, lines = run_cli(
        "x", "--task", "i2v-A14B", "--ckpt_dir", str(ckpts["i2v-A14B"]), "--image", str(bad), *FAST, *out
    )
    assert code == 2 and lines[-1].startswith("wanflow: error: cannot read image")
    image_args = ("--task", "i2v-A14B", "--ckpt_dir", str(ckpts["i2v-A14B"]), "--image", str(tmp_path))
    code, lines = run_cli("x", *image_args, *FAST, *out)
    assert code == 2 and lines[-1] == f"wanflow: error: {tmp_path} is a folder, not an image file"
    code, lines = run_cli("x", "--task", "t2v-A14B", "--ckpt_dir", str(ckpts["i2v-A14B"]), *FAST, *out)
    assert code == 2 and "needs a t2v model" in lines[-1]
    assert not (tmp_path / "o.mp4").exists()


def test_fp8_flag_quantizes_both_experts(ckpts, tmp_path, monkeypatch):
    import torch

    from wanflow.pipelines import pipeline
    from wanflow.runtime.fp8 import block_linears

    quantize, quantized = pipeline.quantize_fp8, []
    monkeypatch.setattr(pipeline, "quantize_fp8", lambda model: quantized.append(quantize(model)))
    out = str(tmp_path / "frames") + "/"
    assert main(["generate", "x", "--ckpt_dir", str(ckpts["t2v-A14B"]), *FAST, "--save_file", out, "--fp8"]) == 0
    stored = [m.parametrizations.weight.original0.dtype for model in quantized for m in block_linears(model)]
    assert len(quantized) == 2 and set(stored) == {torch.float8_e4m3fn}
    assert sorted(os.listdir(out)) == [f"{i:05d}.png" for i in range(9)]


def test_vae_tile_flag_decodes_in_tiles(ckpts, tmp_path, monkeypatch):
    from wanflow.pipelines import pipeline

    decode, tiles = pipeline.decode_tiled, []

    def record(vae, latents, tile, on_frame):
        tiles.append(tile)
        return decode(vae, latents, tile, on_frame)

    monkeypatch.setattr(pipeline, "decode_tiled", record)
    out = str(tmp_path / "frames") + "/"
    args = ["generate", "x", "--ckpt_dir", str(ckpts["t2v-A14B"]), *FAST, "--save_file", out, "--vae_tile", "3"]
    assert main(args) == 0
    assert tiles == [3]
    assert sorted(os.listdir(out)) == [f"{i:05d}.png" for i in range(9)]


def test_i2v_from_the_command_line(ckpts, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8)).save(image)
    out = tmp_path / "i2v.gif"
    assert (
        main(
            [
                "generate",
                "x",
                "--task",
                "i2v-A14B",
                "--ckpt_dir",
                str(ckpts["i2v-A14B"]),
                "--image",
                str(image),
                *FAST,
                "--save_file",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.n_frames == 9 and im.size == (64, 48)  # aspect of the 64x48 image within 64*64 pixels


def test_an_image_url_is_fetched_once(tmp_path, capsys):
    """``--image URL``: checked before the models load and used by the run, one request (a local server here)."""
    import functools
    import http.server
    import threading

    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/red.png"
        out = tmp_path / "o.mp4"
        code, _ = run_main(capsys, "a red circle", "--task", "ti2v-5B", "--image", url, *FAST, "--save_file", str(out))
    finally:
        server.shutdown()
    assert code == 0 and out.exists() and gets == ["/red.png"]
