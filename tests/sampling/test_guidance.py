"""The guidance rules (``sampling.guidance``): each rule's combination against diffusers' guider of the same name on
random predictions; whole runs of a tiny two-expert checkpoint against diffusers' modular Wan 2.2 pipeline with those
guiders (one per expert, as it takes them); CFG-Zero*'s zero steps run no forward; the spec's refusals; the CLI's and
the server's field."""

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance
from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22Blocks

from tests.pipelines.test_parity import ReferenceUniPC, compare
from tests.tiny.checkpoint import write_both_layouts
from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.sampling.guidance import CFG, Guidance, parse_guidance
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


def diffusers_guider(guidance: Guidance, scale: float):
    if guidance.rule == "cfg":
        return ClassifierFreeGuidance(guidance_scale=scale)
    return ClassifierFreeZeroStarGuidance(guidance_scale=scale, zero_init_steps=guidance.zero_init_steps)


@pytest.mark.parametrize("spec", ["cfg", "cfg_zero_star:0"])
def test_the_combination_is_diffusers_guiders(spec):
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 16, 3, 8, 8, generator=g)
    uncond[1] = 0.3 * cond[1] + 0.1 * uncond[1]  # a second sample with its own projection scale
    guider = diffusers_guider(parse_guidance(spec), 4.5)
    guider.set_state(step=3, num_inference_steps=8, timestep=torch.tensor(500))
    theirs = guider.forward(cond, uncond).pred
    ours = parse_guidance(spec).combine(cond, uncond, 4.5)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5) and (theirs - cond).abs().max() > 1
    if spec != "cfg":  # the projection scale moved the result away from plain CFG's
        assert (ours - CFG.combine(cond, uncond, 4.5)).abs().max() > 0.1


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    root = tmp_path_factory.mktemp("guidance-a14b")
    write_both_layouts(root, "t2v-A14B", seed=41)
    modular = Wan22Blocks().init_pipeline(str(root / "diffusers"))
    modular.load_components(dtype=torch.float32)
    modular.set_progress_bar_config(disable=True)
    return root, modular


@pytest.mark.parametrize(
    ("spec", "scale"), [("cfg", (3.0, 4.5)), ("cfg_zero_star", (3.0, 4.5)), ("cfg_zero_star:2", (3.0, 4.5))]
)
def test_runs_as_diffusers_modular_pipeline_with_its_guiders(a14b, spec, scale):
    root, modular = a14b
    guidance, (low, high) = parse_guidance(spec), scale if isinstance(scale, tuple) else (scale, scale)
    shift = TASKS["t2v-A14B"].shift
    modular.update_components(
        scheduler=ReferenceUniPC.from_config(modular.scheduler.config, flow_shift=shift),
        guider=diffusers_guider(guidance, high),  # diffusers' transformer: the high-noise expert
        guider_2=diffusers_guider(guidance, low),  # its own steps counted from the run's first, as ours
    )
    ours = WanPipeline.from_pretrained(root / "official")
    noise = ours.noise((16, 3, 8, 8), seed=9)
    steps = []  # 8 steps at shift 12: 6 on the high-noise expert, 2 on the low-noise one
    video = ours(PROMPT, size=(64, 64), frames=9, steps=8, latents=noise, guide_scale=scale, guidance=spec,
                 callback=steps.append)  # fmt: skip
    with torch.no_grad():
        theirs = modular(
            prompt=PROMPT, negative_prompt=TASKS["t2v-A14B"].negative_prompt, height=64, width=64, num_frames=9,
            num_inference_steps=8, latents=noise.clone(), output="videos", output_type="pt",
        )  # fmt: skip
    compare(video, theirs)
    assert [s.expert for s in steps] == ["high"] * 6 + ["low"] * 2
    if guidance != CFG:
        plain = ours(PROMPT, size=(64, 64), frames=9, steps=8, latents=noise, guide_scale=scale)
        assert (plain.frames - video.frames).abs().max() > 0.01  # the rule changed the video
        assert video.metadata["guidance"] == str(guidance)


def test_zero_steps_run_no_forward():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in pipe.experts.values()]
    steps = []
    pipe(PROMPT, steps=6, seed=1, guidance="cfg_zero_star:2", callback=steps.append)
    assert len(steps) == 6 and len(calls) == 4  # 2 zero steps, then 4 batched CFG forwards
    for h in handles:
        h.remove()
    call = dict(steps=6, seed=1, guidance="cfg_zero_star:6", solver="euler")  # every step zero: euler keeps the noise
    (latents,) = pipe(PROMPT, output_type="latent", return_dict=False, **call)
    assert torch.equal(latents, pipe.noise(latents.shape[1:], 1))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("apg", "guidance is one of cfg, cfg_zero_star"),
        ("cfg:2", "zero steps belong to cfg_zero_star"),
        ("cfg_zero_star:x", r"cfg_zero_star:K takes K zero steps, 0..100"),
        ("cfg_zero_star:101", r"0..100"),
        (3, "guidance is a string"),
    ],
)
def test_refusals(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_guidance(spec)


def test_spec_forms():
    assert parse_guidance(None) == parse_guidance("cfg") == CFG
    assert parse_guidance("cfg_zero_star") == Guidance("cfg_zero_star", 1)  # diffusers' default: one zero step
    assert str(parse_guidance(" cfg_zero_star:0")) == "cfg_zero_star:0"  # ComfyUI's CFGZeroStar node: the scale alone


def test_cli_and_server_fields(tmp_path):
    ours = WanPipeline.from_builtin("t2v-A14B")(PROMPT, steps=4, seed=6, guidance="cfg_zero_star:1").frames
    flags = ["--guidance", "cfg_zero_star:1", "--sample_steps", "4", "--base_seed", "6"]
    assert main(["generate", PROMPT, *flags, "--save_file", str(tmp_path / "out") + "/"]) == 0
    frames = np.stack([np.asarray(f) for f in read_frames(tmp_path / "out")])
    assert np.array_equal(frames, to_uint8(ours))
    assert GenerateRequest(prompt=PROMPT, guidance="cfg_zero_star:3").options().guidance == "cfg_zero_star:3"
