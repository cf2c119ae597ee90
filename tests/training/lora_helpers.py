"""Tiny data folders and runs for the ``train-lora`` tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wanflow.io.video import save_video
from wanflow.training.lora_settings import LoraSettings

SIZE = (32, 32)
FRAMES = 5


def bar_clip(i: int, frames: int = 9) -> np.ndarray:
    """(F, 40, 48, 3) uint8: a bright horizontal bar sliding right on grey, offset by ``i``."""
    clip = np.full((frames, 40, 48, 3), 60, np.uint8)
    for f in range(frames):
        clip[f, 14:22, 4 + i + f : 30 + i + f] = (230, 200, 40)
    return clip


def write_data(folder: Path, clips: int = 3, word: str = "zorb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        save_video(bar_clip(i), folder / f"clip{i}.mp4", fps=8)
        (folder / f"clip{i}.txt").write_text(f"a {word} sliding right, take {i}\n")
    return folder


def settings(data: Path, out: Path, ckpt: Path, task: str = "t2v-A14B", **kw) -> LoraSettings:
    base = dict(steps=4, rank=4, lr=1e-3, size=SIZE, frames=FRAMES, checkpoint_every=2, device="cpu")
    return LoraSettings(data, str(out), task=task, ckpt_dir=ckpt, **{**base, **kw})


def crash_at(monkeypatch, step: int) -> None:
    """Every ``train_lora`` run from now on raises at ``step`` (as a killed run stops), until ``monkeypatch.undo()``."""
    from wanflow.training import lora as lora_training

    make_loss = lora_training.make_loss

    def crashing(*args, **kwargs):
        loss_fn = make_loss(*args, **kwargs)

        def crash(at, generator):
            if at == step:
                raise RuntimeError("simulated crash")
            return loss_fn(at, generator)

        return crash

    monkeypatch.setattr(lora_training, "make_loss", crashing)


def lora_tensors(paths: dict) -> dict:
    """Every tensor of the LoRA files ``{expert: path}``, keyed ``expert/key``."""
    from safetensors import safe_open

    out = {}
    for name, path in paths.items():
        with safe_open(path, "pt") as f:
            out.update({f"{name}/{k}": f.get_tensor(k) for k in f.keys()})
    return out
