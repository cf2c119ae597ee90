"""Enhance-A-Video (``runtime.enhance_a_video``): its scale bit for bit against KJNodes' node's own functions, and the
built-in expert's forward against ComfyUI's WanModel patched by the node (``kj_enhance.json``, run as an oracle: see
its "source"); the hook leaves the model as it found it; the refusals; the CLI's and the server's fields."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.models.dit import WholeSequence
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.enhance_a_video import EnhanceAVideo, feta_score
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

GOLDEN = json.loads((Path(__file__).parent / "kj_enhance.json").read_text())
PROMPT = "a red circle moving right"


def tensor(text: str, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="<f4").copy()).view(shape)


@pytest.mark.parametrize("case", GOLDEN["scores"], ids=lambda c: f"{c['shape']}-w{c['weight']}")
def test_the_scale_is_kjnodes_bit_for_bit(case):
    q, k = tensor(case["q"], case["shape"]), tensor(case["k"], case["shape"])
    assert float(feta_score(q, k, case["frames"], case["weight"])) == case["score"]


def test_the_forward_is_comfyuis_wan_patched_by_the_node():
    """The built-in high-noise expert with the hook against ComfyUI's own WanModel with the node's patch (two
    implementations of the DiT: 1e-5 apart unpatched too)."""
    dit = WanPipeline.from_builtin("t2v-A14B").experts["high"]
    cfg = dit.cfg
    x = tensor(GOLDEN["x"], (2, 16, 3, 8, 8))
    context = tensor(GOLDEN["context"], (2, cfg.text_len, cfg.text_dim))
    t = torch.tensor(GOLDEN["t"])
    with torch.no_grad():
        plain = dit(x, t, context)
        torch.testing.assert_close(plain[:, :4], tensor(GOLDEN["plain"], (2, 4, 3, 8, 8)), rtol=0, atol=2e-5)
        for case in GOLDEN["patched"]:
            hook = EnhanceAVideo(case["weight"])
            hook.before(None, dit)
            hook.scores.frames = 3  # (the loop's wrap sets it from the latents)
            out = dit(x, t, context)
            hook.end()
            torch.testing.assert_close(out[:, :4], tensor(case["out"], (2, 4, 3, 8, 8)), rtol=0, atol=2e-5)
            assert (out - plain).abs().max() > 0.1  # (the patch moves the output 5000 times the tolerance)
        assert torch.equal(dit(x, t, context), plain)  # (put back)


def test_the_model_is_left_as_found():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    call = dict(steps=4, seed=2)
    plain = pipe(PROMPT, **call).frames
    assert torch.equal(pipe(PROMPT, enhance_a_video=0, **call).frames, plain)  # 0: off
    enhanced = pipe(PROMPT, enhance_a_video=4, **call)
    assert (enhanced.frames - plain).abs().max() > 0.01 and enhanced.metadata["enhance_a_video"] == 4.0
    experts = list(pipe.experts.values())

    def untouched() -> bool:
        blocks = [b for e in experts for b in e.blocks]
        return all(type(e.sequence) is WholeSequence for e in experts) and not any(
            b.self_attn._forward_hooks for b in blocks
        )

    assert untouched()

    def stop(step):
        if step.index == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):  # ... also when a run fails part way
        pipe(PROMPT, enhance_a_video=4, callback=stop, **call)
    assert untouched() and torch.equal(pipe(PROMPT, **call).frames, plain)


def test_not_with_sequence_parallelism():
    pipe = WanPipeline.from_builtin("t2v-A14B")

    class Sharded(WholeSequence):  # (a plan that spreads the tokens, as runtime.sequence_parallel's)
        pass

    pipe.experts["high"].sequence = Sharded()
    with pytest.raises(ValueError, match="Enhance-A-Video with sequence parallelism: not run"):
        EnhanceAVideo(2.0).before(None, pipe.experts["high"])
    with pytest.raises(ValueError, match="Enhance-A-Video with sequence parallelism: not run"):
        pipe(PROMPT, steps=2, enhance_a_video=2)  # (said before the run)


@pytest.mark.parametrize("value", [-1, True, "2", float("nan"), float("inf")])
def test_refusals(value):
    with pytest.raises(ValueError, match="enhance_a_video is Enhance-A-Video's weight, a number >= 0"):
        resolve(GenerateOptions(PROMPT, enhance_a_video=value), TASKS["t2v-A14B"])


def test_cli_flag_gives_the_python_frames(tmp_path):
    ours = WanPipeline.from_builtin("t2v-A14B")(PROMPT, steps=3, seed=6, enhance_a_video=2.5).frames
    out = str(tmp_path / "out") + "/"
    flags = ["--enhance_a_video", "2.5", "--sample_steps", "3", "--base_seed", "6", "--save_file", out]
    assert main(["generate", PROMPT, *flags]) == 0
    frames = np.stack([np.asarray(f) for f in read_frames(tmp_path / "out")])
    assert np.array_equal(frames, to_uint8(ours))


def test_server_field_reaches_the_options():
    assert GenerateRequest(prompt=PROMPT, enhance_a_video=2).options().enhance_a_video == 2
    with pytest.raises(ValueError, match="enhance_a_video"):
        GenerateRequest(prompt=PROMPT, enhance_a_video=-1)
