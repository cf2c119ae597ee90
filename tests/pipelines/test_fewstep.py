"""Few-step sampling as the distilled LoRAs were trained: the ``lightning`` preset fills what the user left out,
the DiT sees the float timesteps, the experts switch at the usual boundary, and guidance 1 runs one DiT pass a step."""

import pytest
import torch

from tests.pipelines.test_request import cli
from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli.generate import generate_options
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.tasks import TASKS


def test_preset_fills_what_the_user_left_out():
    task = TASKS["t2v-A14B"]
    request = resolve(GenerateOptions("x", preset="lightning"), task)
    assert (request.steps, request.shift, request.solver, request.float_timesteps) == (4, 5.0, "euler", True)
    assert request.guide_scale == (1.0, 1.0)
    override = resolve(GenerateOptions("x", preset="lightning", steps=8, solver="unipc", guide_scale=2.0), task)
    assert (override.steps, override.solver, override.guide_scale, override.shift) == (8, "unipc", (2.0, 2.0), 5.0)
    from_cli = generate_options(cli("x", "--preset", "lightning", "--sample_steps", "8", "--sample_solver", "unipc",
                                    "--sample_guide_scale", "2", "--base_seed", "7"))  # fmt: skip
    python = GenerateOptions("x", preset="lightning", steps=8, solver="unipc", guide_scale=2.0, seed=7)
    assert resolve(from_cli, task) == resolve(python, task)
    plain = resolve(GenerateOptions("x"), task)
    assert (plain.solver, plain.float_timesteps, plain.steps) == ("unipc", False, task.steps)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        resolve(GenerateOptions("x", preset="fast"), task)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B"))


def record_calls(pipe):
    calls = []
    for name, model in pipe.experts.items():
        model.register_forward_pre_hook(lambda m, args, name=name: calls.append((name, args[0].shape[0], args[1])))
    return calls


def test_guidance_1_runs_one_dit_pass_per_step_on_the_float_timesteps(pipe, monkeypatch):
    calls, texts = record_calls(pipe), []
    encode = pipe.text_encoder.encode
    monkeypatch.setattr(pipe.text_encoder, "encode", lambda t: texts.append(t) or encode(t))
    video = pipe("a red circle", preset="lightning", size=(64, 64), frames=5, seed=1)
    assert texts == [["a red circle"]]  # nor is the negative prompt encoded
    assert [(name, batch) for name, batch, _ in calls] == [("high", 1), ("high", 1), ("low", 1), ("low", 1)]
    assert all(t.dtype == torch.float32 for _, _, t in calls)
    assert [t.item() for _, _, t in calls] == [1000.0, 937.5, torch.tensor(2500 / 3).item(), 625.0]
    assert video.metadata["steps"] == 4 and video.metadata["solver"] == "euler" and video.metadata["float_timesteps"]
    calls.clear()
    pipe("a red circle", preset="lightning", guide_scale=3.0, size=(64, 64), frames=5, seed=1)
    assert [batch for _, batch, _ in calls] == [2, 2, 2, 2]  # with guidance, both passes (one CFG batch) a step
    assert len(texts) == 3  # and the negative prompt encoded
