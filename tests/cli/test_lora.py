"""``wanflow generate --lora/--lora_high/--lora_low/--lora_merge/--preset`` and ``wanflow info LORA``: the LoRA
reaches the frames and the file's metadata, and every bad LoRA input is one line with exit code 2."""

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.cli.test_generate import FAST, run_main
from tests.tiny.checkpoint import TINY_DITS, write_official_checkpoint
from tests.tiny.lora import make_lora
from wanflow.cli import main
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-lora")
    ckpt = write_official_checkpoint(root / "t2v", "t2v-A14B")
    cfg = TINY_DITS["t2v-A14B"]
    files = {}
    for name, state in {
        "kohya": make_lora("kohya", cfg)[0],
        "light": make_lora("lightx2v", cfg, seed=2)[0],
        "wide": make_lora("wan", cfg.replace(dim=48, num_heads=4))[0],
        "unknown": {
            **make_lora("wan", cfg)[0],
            "diffusion_model.blocks.0.self_attn.qq.lora_down.weight": torch.ones(1),
        },
        "rank": {
            "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.ones(4, 24),
            "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.ones(32, 8),
        },
    }.items():
        files[name] = root / f"{name}.safetensors"
        save_file(state, files[name])
    data = files["kohya"].read_bytes()
    files["cut"] = root / "cut.safetensors"
    files["cut"].write_bytes(data[: len(data) // 3])
    files["text"] = root / "notes.txt"
    files["text"].write_text("a LoRA? no")
    return ckpt, files


def metadata(path):
    with av.open(str(path)) as container:
        return dict(container.metadata)


def png_frames(folder):
    """The PNG frames of a ``--save_file DIR/`` run, and the metadata of the first."""
    images = [Image.open(p) for p in sorted(folder.glob("*.png"))]
    return np.stack([np.asarray(im.convert("RGB")) for im in images]), dict(images[0].text)


def test_lora_flags_reach_the_frames_and_the_metadata(setup, tmp_path):
    ckpt, files = setup
    loras = ["--lora", f"{files['kohya']}:0.5", "--lora_low", str(files["light"])]
    args = ["generate", "x", "--ckpt_dir", str(ckpt), *FAST, "--base_seed", "4", *loras]
    pipe = WanPipeline.from_pretrained(ckpt)
    pipe.load_lora(files["kohya"], 0.5)
    pipe.load_lora(files["light"], expert="low")
    want = to_uint8(pipe("x", size=(64, 64), frames=9, steps=3, seed=4).frames)
    for merge in ([], ["--lora_merge"]):
        out = tmp_path / f"frames{len(merge)}"
        assert main([*args, *merge, "--save_file", f"{out}/"]) == 0
        frames, meta = png_frames(out)
        assert np.abs(frames.astype(int) - want.astype(int)).max() <= 1  # merged or beside: the same frames
        assert json.loads(meta["loras"]) == [
            {"name": "kohya", "strength": {"high": 0.5, "low": 0.5}, "merged": bool(merge)},
            {"name": "light", "strength": {"low": 1.0}, "merged": bool(merge)},
        ]


def test_preset_lightning(setup, tmp_path):
    ckpt, _ = setup
    out = tmp_path / "p.mp4"
    assert main(["generate", "x", "--ckpt_dir", str(ckpt), "--size", "64*64", "--frame_num", "5", "--preset",
                 "lightning", "--save_file", str(out)]) == 0  # fmt: skip
    meta = metadata(out)
    assert (meta["steps"], meta["solver"], meta["shift"], meta["guide_scale"]) == ("4", "euler", "5.0", "[1.0, 1.0]")
    assert meta["float_timesteps"] == "True"


@pytest.mark.parametrize(
    ("flag", "name", "message"),
    [
        ("--lora", "text", "not a safetensors file"),
        ("--lora", "cut", "not a safetensors file, or a truncated one"),
        ("--lora", "unknown", "blocks.0.self_attn.qq.lora_down.weight"),
        ("--lora_high", "rank", "blocks.0.ffn.0: rank mismatch"),
        ("--lora_low", "wide", "another model size"),
        ("--lora", "kohya:strong", "is not a number"),
        ("--lora", "missing.safetensors", "LoRA file not found"),
    ],
)
def test_bad_lora_input_is_one_line_and_exit_2(setup, tmp_path, capsys, flag, name, message):
    ckpt, files = setup
    path = str(files.get(name.split(":")[0], tmp_path / name.split(":")[0])) + (":strong" if ":" in name else "")
    base = ["x", "--ckpt_dir", str(ckpt), *FAST, "--save_file", str(tmp_path / "o.mp4")]
    code, lines = run_main(capsys, *base, flag, path)
    errors = [line for line in lines if "error" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], lines
    assert not (tmp_path / "o.mp4").exists()


def test_one_expert_flags_on_a_dense_model_and_info(setup, tmp_path, capsys):
    _, files = setup
    ti2v = write_official_checkpoint(tmp_path / "ti2v", "ti2v-5B")
    code, lines = run_main(capsys, "x", "--task", "ti2v-5B", "--ckpt_dir", str(ti2v), *FAST,
                           "--lora_high", str(files["kohya"]))  # fmt: skip
    assert code == 2 and "a high- or low-noise LoRA needs an A14B model" in lines[-1]
    done = subprocess.run(
        [sys.executable, "-m", "wanflow", "info", str(files["light"])], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "LoRA, Wan/ComfyUI keys, official names: LoRA down/up, diff, diff_b, diff_m + alpha" in done.stdout
    assert (
        "rank 4; made for a DiT 24 wide (not a published Wan 2.2 size)" in done.stdout and "(blocks 0-1)" in done.stdout
    )
    bad = subprocess.run([sys.executable, "-m", "wanflow", "info", str(files["cut"])], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("wanflow: error: cannot read LoRA")


def test_hf_addresses_are_fetched_from_the_hub(setup, tmp_path, monkeypatch, capsys):
    """``hf://ORG/NAME[@REVISION]/PATH``: a file through ``hf_hub_download``, a per-expert folder through
    ``snapshot_download`` (no network here: both stood in for, what is asked of them checked)."""
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    ckpt, files = setup
    snapshot = tmp_path / "snapshot"
    (snapshot / "Seko").mkdir(parents=True)
    shutil.copy(files["kohya"], snapshot / "Seko" / "high_noise_model.safetensors")
    shutil.copy(files["light"], snapshot / "Seko" / "low_noise_model.safetensors")
    asked = []

    def download(repo, filename, revision=None):
        asked.append(("file", repo, filename, revision))
        if filename == "gone.safetensors":
            raise EntryNotFoundError("404 Client Error: Entry Not Found for url: https://huggingface.co/...")
        return str(files[filename.removesuffix(".safetensors")])

    def snapshot_download(repo, revision=None, allow_patterns=None):
        asked.append(("folder", repo, allow_patterns, revision))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = tmp_path / "hub"
    args = ["generate", "x", "--ckpt_dir", str(ckpt), *FAST, "--base_seed", "4", "--save_file", f"{out}/"]
    assert main([*args, "--lora", "hf://org/loras/kohya.safetensors:0.5", "--lora", "hf://org/fast@v2/Seko"]) == 0
    assert asked == [("file", "org/loras", "kohya.safetensors", None), ("folder", "org/fast", ["Seko/*"], "v2")]
    pipe = WanPipeline.from_pretrained(ckpt)
    pipe.load_lora(files["kohya"], 0.5)
    pipe.load_lora(snapshot / "Seko")
    want = to_uint8(pipe("x", size=(64, 64), frames=9, steps=3, seed=4).frames)
    assert np.array_equal(png_frames(out)[0], want)
    code, lines = run_main(capsys, "x", "--ckpt_dir", str(ckpt), *FAST, "--lora", "hf://org/loras/gone.safetensors")
    errors = [line for line in lines if "error" in line]
    assert code == 2 and len(errors) == 1, lines
    message = "hf://org/loras/gone.safetensors: cannot fetch it from the Hugging Face Hub (EntryNotFoundError: 404"
    assert message in errors[0]
