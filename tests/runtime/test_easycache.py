"""EasyCache (``runtime.easycache``): the built-in models' runs bit for bit against ComfyUI's EasyCache node's own
functions driving the same model calls (``easycache.json``, run as an oracle: see its "source"), with guidance and
without, image-to-video's conditioning channels, TI2V, a two-call sampler, a chain of sampler calls and a low-noise
call at its own shift; threshold 0 is the uncached run; nothing crosses into the next sampler call; the settings and
the refusals; the CLI's, the server's and a workflow's."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.easycache import EasyCache, EasyCacheSettings
from wanflow.runtime.step_cache import parse_cache
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

GOLDEN = json.loads((Path(__file__).parent / "easycache.json").read_text())
PROMPT = "a red circle moving right"
COMFY = dict(steps=20, seed=3, solver="euler", scheduler="simple", shift=8.0)  # (the golden's)


def image():
    """The golden's input image: a red disc, radius 14, on grey 40 at 64x64."""
    im = Image.new("RGB", (64, 64), (40, 40, 40))
    ImageDraw.Draw(im).ellipse((18, 18, 46, 46), fill=(220, 30, 30))
    return im


def counted(pipe: WanPipeline) -> list[int]:
    """A counter of the DiT forwards of ``pipe`` (a CFG batch counts one)."""
    calls = [0]
    for expert in pipe.experts.values():
        expert.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['task']}-{c['cache']}-{sorted(c['options'])}")
def test_runs_as_comfyuis_node(case):
    pipe = WanPipeline.from_builtin(case["task"])
    forwards = counted(pipe)
    call = {**COMFY, **case["options"], **({"image": image()} if case["image"] else {})}
    latents = pipe(PROMPT, cache=case["cache"], output_type="latent", **call).frames
    want = np.frombuffer(base64.b64decode(case["latents"]), dtype="<f4").reshape(case["shape"])
    assert torch.equal(latents, torch.from_numpy(want.copy()))
    assert forwards[0] == case["forwards"]
    forwards[0] = 0
    plain = pipe(PROMPT, output_type="latent", **call).frames
    assert forwards[0] > case["forwards"] and (plain - latents).abs().max() > 0.05  # (the cache reused calls)


def test_threshold_zero_is_the_uncached_run():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    forwards = counted(pipe)
    call = dict(**COMFY, guide_scale=3.5)
    plain = pipe(PROMPT, **call).frames
    runs = forwards[0]
    assert torch.equal(pipe(PROMPT, cache="easycache:0", **call).frames, plain)
    assert forwards[0] == 2 * runs


def test_a_cfg_pp_sampler_at_guidance_one_reads_both_passes():
    """A CFG++ sampler runs the unconditional pass at guidance 1 too (ComfyUI's disable_cfg1_optimization): the cache
    keeps both branches' differences, and at threshold 0 it is the uncached run."""
    pipe = WanPipeline.from_builtin("t2v-A14B")
    call = dict(**{**COMFY, "solver": "euler_cfg_pp"}, guide_scale=1.0)
    plain = pipe(PROMPT, **call).frames
    assert torch.equal(pipe(PROMPT, cache="easycache:0", **call).frames, plain)
    hook = EasyCache(EasyCacheSettings(0.2), lambda n: 8.0, uncond=True)
    cached = pipe(PROMPT, hooks=[hook], **call).frames
    assert hook.reused_calls > 0 and (cached - plain).abs().max() > 0.01


def test_nothing_crosses_into_the_next_call():
    """Each expert (ComfyUI's sampler call) starts its own record; the last one's differences are dropped."""
    pipe = WanPipeline.from_builtin("t2v-A14B")
    hook = EasyCache(EasyCacheSettings(0.1), lambda n: 8.0)
    seen = []

    def look(step):
        seen.append((step.expert, dict(hook.caches), {k: bool(c.diffs) for k, c in hook.caches.items()}))

    original = pipe.step_cache
    pipe(PROMPT, **COMFY, guide_scale=3.5, hooks=[hook], callback=look)
    assert pipe.step_cache == original
    switch = next(i for i, (expert, _, _) in enumerate(seen) if expert == "low")
    assert set(seen[switch][1]) == {(0, "high"), (0, "low")}
    assert seen[switch - 1][2] == {(0, "high"): True}
    assert seen[switch][2] == {(0, "high"): False, (0, "low"): True}  # the high-noise record freed at the switch
    assert hook.reused_calls > 0 and all(not c.diffs for c in hook.caches.values())  # (and everything at the end)


def test_settings():
    assert parse_cache("easycache") == EasyCacheSettings(0.2, 0.15, 0.95)  # the node's defaults
    assert parse_cache("easycache:0.1") == EasyCacheSettings(0.1, 0.15, 0.95)
    assert parse_cache("easycache:0.1:0.2:0.8") == EasyCacheSettings(0.1, 0.2, 0.8)
    assert str(parse_cache("easycache:0.1")) == "easycache:0.1:0.15:0.95"
    for spec, message in [
        ("easycache:0.1:0.2", "or easycache:THRESHOLD:START:END, got easycache:0.1:0.2$"),
        ("easycache:x", "easycache's settings are numbers"),
        ("easycache:-1", "easycache's threshold is a number >= 0"),
        ("easycache:nan", "easycache's threshold is a number >= 0"),
        ("easycache:0.1:0.9:0.2", "0 <= START <= END <= 1"),
        ("teacache", "unknown step cache 'teacache'; use magcache"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_cache(spec)


def test_refusals_and_what_it_runs_with():
    task = TASKS["t2v-A14B"]
    with pytest.raises(ValueError, match="easycache with skip layer guidance"):
        resolve(GenerateOptions(PROMPT, cache="easycache", slg_layers="1"), task)
    with pytest.raises(ValueError, match="magcache plans one model call a step: not with heun"):
        resolve(GenerateOptions(PROMPT, cache="magcache", solver="heun", scheduler="simple"), task)
    with pytest.raises(ValueError, match=r"magcache plans each expert's steps as one call: not with sampler_calls"):
        resolve(GenerateOptions(PROMPT, cache="magcache", steps=8, switch_step=4, sampler_calls="2,4"), task)
    request = resolve(GenerateOptions(PROMPT, cache="easycache:0.1", solver="heun", scheduler="simple"), task)
    assert request.cache == EasyCacheSettings(0.1) and request.metadata() is not None


def test_cli_flag_gives_the_python_frames(tmp_path):
    call = dict(steps=12, seed=6, guide_scale=3.5)
    ours = WanPipeline.from_builtin("t2v-A14B")(PROMPT, cache="easycache:0.05", **call)
    assert ours.metadata["cache"] == "easycache:0.05:0.15:0.95"
    out = str(tmp_path / "out") + "/"
    flags = ["--sample_steps", "12", "--base_seed", "6", "--sample_guide_scale", "3.5", "--cache", "easycache:0.05"]
    assert main(["generate", PROMPT, *flags, "--save_file", out]) == 0
    frames = np.stack([np.asarray(f) for f in read_frames(tmp_path / "out")])
    assert np.array_equal(frames, to_uint8(ours.frames))


def test_server_field_reaches_the_options():
    assert GenerateRequest(prompt=PROMPT, cache="easycache:0.1:0.2:0.9").options().cache == "easycache:0.1:0.2:0.9"
