"""The task registry: every task-specific fact in one entry, and a task added from outside runs end to end."""

import dataclasses

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.configs import DIT_CONFIGS
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.tasks import TASKS, get_task, task_for_channels, task_for_model


@pytest.mark.parametrize("name", list(TASKS))
def test_input_channels_match_the_published_dits(name):
    task, cfg = TASKS[name], DIT_CONFIGS[name]
    assert task.in_channels() == cfg.in_dim and task.z_dim == cfg.out_dim and task.model_type == cfg.model_type
    assert task_for_channels(cfg.in_dim, cfg.out_dim) is task and task_for_model(cfg.model_type) is task


def test_the_rules_of_each_task():
    t2v, i2v, ti2v = (TASKS[n] for n in ("t2v-A14B", "i2v-A14B", "ti2v-5B"))
    assert (t2v.image, i2v.image, ti2v.image) == ("none", "required", "optional")
    assert i2v.in_channels(20) == 20 + 4 + 20 and t2v.in_channels(20) == 20  # 4 mask channels + the image latent
    assert (t2v.size_multiple, ti2v.size_multiple) == (16, 32)  # VAE stride x patch 2
    assert (t2v.is_moe, ti2v.is_moe) == (True, False)
    with pytest.raises(ValueError, match="i2v-A14B needs an image: upload"):
        i2v.check_image(False, "an image: upload")
    with pytest.raises(ValueError, match="t2v-A14B takes no image"):
        t2v.check_image(True)
    ti2v.check_image(True), ti2v.check_image(False)  # optional: both fine
    with pytest.raises(ValueError, match=r"no Wan 2\.2 task has a DiT with 20 input"):
        task_for_channels(20, 16)
    with pytest.raises(ValueError, match="unknown task 'x'"):
        get_task("x")


def test_overrides_from_a_checkpoint():
    task = TASKS["t2v-A14B"].with_overrides({"size": [64, 64], "guide_scale": [4, 4], "sizes": [[64, 64]]})
    assert task.size == (64, 64) and task.guide_scale == (4, 4) and task.sizes == ((64, 64),)
    with pytest.raises(ValueError, match="unknown task defaults"):
        task.with_overrides({"model_type": "i2v"})


def test_a_task_is_one_entry_and_one_conditioning_file(tmp_path, monkeypatch):
    """A new task (here: t2v at twice the frame rate, conditioned by t2v's own file) registered from outside runs
    through the pipeline and the CLI's --task without touching any other module."""
    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    fast = dataclasses.replace(TASKS["t2v-A14B"], name="t2v-fast", fps=32, conditioning="wanflow.pipelines.t2v")
    monkeypatch.setitem(TASKS, "t2v-fast", fast)
    kw = dict(size=(64, 48), frames=5, steps=2, seed=3)
    ours = WanPipeline.from_pretrained(ckpt, task="t2v-fast")("a red circle", **kw)
    base = WanPipeline.from_pretrained(ckpt, task="t2v-A14B")("a red circle", **kw)
    assert ours.fps == 32 and ours.metadata["task"] == "t2v-fast" and torch.equal(ours.frames, base.frames)

    from wanflow.cli import main

    out = tmp_path / "out.gif"
    args = ["generate", "a red circle", "--task", "t2v-fast", "--ckpt_dir", str(ckpt), "--size", "64*48"]
    assert main([*args, "--frame_num", "5", "--sample_steps", "2", "--save_file", str(out)]) == 0 and out.is_file()
