"""RIFLEx for a run (``runtime.riflex``): a tiny checkpoint's video against diffusers' own ``WanPipeline`` whose rotary
table has the frame frequency lowered as the RIFLEx authors' Wan code lowers it (``rope_params_riflex``: the k-th
inverse frequency set to 0.9 * 2 pi / L for L latent frames), both experts; the hook leaves the model as it found
it; the refusals; the CLI's and the server's fields. The tables themselves: ``tests/models/test_rope.py``."""

import math

import numpy as np
import pytest
import torch
from diffusers import WanPipeline as DiffusersWanPipeline

from tests.pipelines.test_parity import ReferenceUniPC, compare
from tests.tiny.checkpoint import write_both_layouts
from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {task: write_both_layouts(tmp_path_factory.mktemp(task), task, seed=37) for task in ("t2v-A14B", "ti2v-5B")}


def authors_riflex(transformer, k: int, latent_frames: int) -> None:
    """diffusers' rotary table (cos and sin of each frame position, every real dim of a pair repeated) with the
    frame axis's k-th frequency at 0.9 * 2 pi / latent_frames, as the RIFLEx authors' Wan rope computes it."""
    rope = transformer.rope
    positions = torch.arange(rope.max_seq_len, dtype=torch.float64)
    angle = positions * (0.9 * 2 * math.pi / latent_frames)
    for table, fn in ((rope.freqs_cos, torch.cos), (rope.freqs_sin, torch.sin)):
        table[:, 2 * (k - 1)] = table[:, 2 * (k - 1) + 1] = fn(angle).to(table.dtype)


@pytest.mark.parametrize(("task", "k"), [("t2v-A14B", 1), ("ti2v-5B", 2)])
def test_runs_as_diffusers_with_the_authors_riflex(checkpoints, task, k):
    ours = WanPipeline.from_pretrained(checkpoints[task] / "official")
    theirs = DiffusersWanPipeline.from_pretrained(checkpoints[task] / "diffusers")
    theirs.scheduler = ReferenceUniPC.from_config(theirs.scheduler.config, flow_shift=TASKS[task].shift)
    theirs.set_progress_bar_config(disable=True)
    s, t = ours.vae.cfg.stride[1], ours.vae.cfg.stride[0]
    frames = 13
    latent_frames = (frames - 1) // t + 1
    noise = ours.noise((ours.vae.cfg.z_dim, latent_frames, 64 // s, 64 // s), seed=5)
    for transformer in filter(None, (theirs.transformer, theirs.transformer_2)):
        authors_riflex(transformer, k, latent_frames)
    steps = []
    video = ours(
        PROMPT, size=(64, 64), frames=frames, steps=8, latents=noise, guide_scale=4.0, riflex=k, callback=steps.append
    )
    with torch.no_grad():
        out = theirs(
            PROMPT, negative_prompt=TASKS[task].negative_prompt, height=64, width=64, num_frames=frames,
            num_inference_steps=8, latents=noise.clone(), output_type="pt", guidance_scale=4.0,
        ).frames  # fmt: skip
    compare(video, out)
    assert {s.expert for s in steps} == ({"high", "low"} if TASKS[task].boundary else {"dense"})
    plain = ours(PROMPT, size=(64, 64), frames=frames, steps=8, latents=noise, guide_scale=4.0)
    assert (plain.frames - video.frames).abs().max() > 0.01  # RIFLEx moved the video (100 times the tolerance)
    assert video.metadata["riflex"] == k and "riflex" not in plain.metadata


def test_the_model_is_left_as_found():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    call = dict(steps=4, seed=2, frames=13)
    plain = pipe(PROMPT, **call).frames
    assert torch.equal(pipe(PROMPT, riflex=0, **call).frames, plain)  # 0: off
    lowered = pipe(PROMPT, riflex=6, **call).frames
    assert (lowered - plain).abs().max() > 0.01
    assert all(expert.riflex == 0 for expert in pipe.experts.values())  # the hook put theirs back

    def stop(step):
        if step.index == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):  # ... also when a run fails part way
        pipe(PROMPT, riflex=6, callback=stop, **call)
    assert all(expert.riflex == 0 for expert in pipe.experts.values())
    assert torch.equal(pipe(PROMPT, **call).frames, plain)


@pytest.mark.parametrize("value", [-1, True, "6", 2.5])
def test_refusals(value):
    with pytest.raises(ValueError, match="riflex is the frame frequency to lower, a whole number"):
        resolve(GenerateOptions(PROMPT, riflex=value), TASKS["t2v-A14B"])


def test_the_model_names_its_frequencies():
    pipe = WanPipeline.from_builtin("ti2v-5B")  # head dim 64: 12 frame frequencies
    with pytest.raises(ValueError, match=r"1..12 at head dim 64"):
        pipe(PROMPT, steps=2, riflex=13)


def test_cli_flag_gives_the_python_frames(tmp_path):
    ours = WanPipeline.from_builtin("t2v-A14B")(PROMPT, steps=3, seed=6, riflex=4).frames
    out = str(tmp_path / "out") + "/"
    assert (
        main(["generate", PROMPT, "--riflex", "4", "--sample_steps", "3", "--base_seed", "6", "--save_file", out]) == 0
    )
    frames = np.stack([np.asarray(f) for f in read_frames(tmp_path / "out")])
    assert np.array_equal(frames, to_uint8(ours))


def test_server_field_reaches_the_options():
    assert GenerateRequest(prompt=PROMPT, riflex=6).options().riflex == 6
    with pytest.raises(ValueError, match="riflex"):
        GenerateRequest(prompt=PROMPT, riflex=-1)
