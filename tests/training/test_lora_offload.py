"""``train-lora --offload block``: the frozen blocks stream from host memory (``runtime.block_stream``) and the LoRA
is the one trained beside resident blocks, bit for bit, through the sample videos (whose pipeline applies the stream
again) and a resume; without gradient checkpointing the run is refused at the boundary."""

import pytest
import torch

from tests.training.lora_helpers import lora_tensors, settings
from wanflow.cli import main
from wanflow.training import lora as lora_training
from wanflow.training.lora import train_lora


def test_streamed_blocks_train_the_lora_of_resident_ones(tmp_path, ckpt, data, monkeypatch):
    streams = []
    load_base = lora_training.load_base
    monkeypatch.setattr(lora_training, "load_base", lambda *a: streams.append(load_base(*a)) or streams[-1])
    kw = dict(steps=4, lr=2e-2, sample_prompt="a zorb sliding right")
    resident, history = train_lora(settings(data, tmp_path / "a/x", ckpt, **kw), progress=False)
    assert not any(hasattr(model, "block_stream") for model in streams)
    streams.clear()
    streamed, streamed_history = train_lora(settings(data, tmp_path / "b/x", ckpt, offload="block", **kw), False)
    assert [hasattr(model, "block_stream") for model in streams] == [True, True]
    assert streamed_history.losses == history.losses
    ours, theirs = lora_tensors(streamed), lora_tensors(resident)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(v.abs().max() > 0 for k, v in ours.items() if "lora_up" in k)
    videos = [(tmp_path / run / "x_step00004.mp4").read_bytes() for run in "ab"]
    assert videos[0] == videos[1]  # the samples, made by a pipeline under the same policy


def test_streaming_needs_gradient_checkpointing(tmp_path, ckpt, data, capsys):
    with pytest.raises(ValueError, match="--offload block needs gradient checkpointing"):
        settings(data, tmp_path / "x", ckpt, offload="block", gradient_checkpointing=False)
    argv = ["train-lora", str(data), "--task", "t2v-A14B", "--ckpt_dir", str(ckpt), "--out", str(tmp_path / "y")]
    assert main([*argv, "--offload", "block", "--no_gradient_checkpointing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wanflow: error: --offload block needs gradient checkpointing") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(ValueError, match="--offload must be one of"):
        settings(data, tmp_path / "x", ckpt, offload="model")
