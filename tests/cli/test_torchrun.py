"""``torchrun ... -m wanflow generate`` with the reference's parallel flags gives the single-process video."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main

FAST = ["--size", "64*64", "--frame_num", "5", "--sample_steps", "3", "--base_seed", "11"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frames(folder):
    return np.stack([np.asarray(Image.open(folder / name)) for name in sorted(os.listdir(folder))])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


V2V = ["--video", "VIDEO", "--strength", "0.6"]  # video to video: the same start latents on every rank


def write_video(folder) -> None:
    """5 random 64x64 frames as a PNG folder."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


@pytest.mark.parametrize(
    "flags", [["--ulysses_size", "2"], ["--cfg_parallel", "--dit_fsdp", "--t5_fsdp"], ["--ulysses_size", "2", *V2V]]
)
def test_two_processes_match_one(ckpt, tmp_path, flags):
    if "VIDEO" in flags:
        write_video(tmp_path / "in")
        flags = [str(tmp_path / "in") if f == "VIDEO" else f for f in flags]
    shared = flags[flags.index("--video") :] if "--video" in flags else []  # the single process's too
    single = tmp_path / "single"
    assert main(["generate", "a red circle", "--ckpt_dir", str(ckpt), *FAST, *shared, "--save_file", f"{single}/"]) == 0
    multi = tmp_path / "multi"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "wanflow",
        "generate",
        "a red circle",
        "--ckpt_dir",
        str(ckpt),
        *FAST,
        "--save_file",
        f"{multi}/",
        *flags,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = frames(single), frames(multi)
    assert a.shape == b.shape == (5, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # fp32 reduction order may move a pixel by one level


def test_parallel_flags_need_torchrun(ckpt, tmp_path, capsys):
    code = main(
        ["generate", "x", "--ckpt_dir", str(ckpt), *FAST, "--ulysses_size", "2", "--save_file", str(tmp_path / "o.mp4")]
    )
    assert code == 2
    assert "need several processes: launch with torchrun" in capsys.readouterr().err
