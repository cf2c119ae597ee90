"""The guidance rules (``sampling.guidance``): each rule's combination against diffusers' guider of the same name on
random predictions; whole runs of a tiny two-expert checkpoint against diffusers' modular Wan 2.2 pipeline with those
guiders (one per expert, as it takes them); CFG-Zero*'s zero steps run no forward; the spec's refusals; the CLI's and
the server's field."""

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance, SkipLayerGuidance
from diffusers.hooks import LayerSkipConfig
from diffusers.modular_pipelines.wan.modular_blocks_wan22 import Wan22Blocks

from tests.pipelines.test_parity import ReferenceUniPC, compare
from tests.tiny.checkpoint import write_both_layouts
from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.pipelines.core import Conditioning, guided_velocity
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.sampling.comfy_schedules import comfy_schedule
from wanflow.sampling.guidance import CFG, Guidance, SkipLayers, comfy_window, parse_guidance
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


def diffusers_guider(guidance: Guidance, scale: float):
    slg = guidance.slg
    if slg is not None:  # (diffusers' SLG guider combines with plain CFG only; its skip_layer_guidance_layers= builds
        # a config its hook cannot read in 0.42.1, so the config is given: whole blocks of the ``blocks`` stack)
        return SkipLayerGuidance(
            guidance_scale=scale, skip_layer_guidance_scale=slg.scale, skip_layer_guidance_start=slg.start,
            skip_layer_guidance_stop=slg.stop, skip_layer_config=LayerSkipConfig(list(slg.layers), fqn="blocks"),
        )  # fmt: skip
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


SLG = dict(slg_layers="1", slg_scale=2.0, slg_start=0.0, slg_stop=1.0)  # a third pass on steps 1..7, both experts


@pytest.mark.parametrize(
    ("spec", "scale", "slg"),
    [("cfg", (3.0, 4.5), {}), ("cfg_zero_star", (3.0, 4.5), {}), ("cfg_zero_star:2", (3.0, 4.5), {}),
     ("cfg", (3.0, 4.5), SLG)],
    ids=["cfg", "cfg_zero_star", "cfg_zero_star:2", "cfg+slg"],
)  # fmt: skip
def test_runs_as_diffusers_modular_pipeline_with_its_guiders(a14b, spec, scale, slg):
    root, modular = a14b
    guidance = resolve(GenerateOptions(PROMPT, guidance=spec, **slg), TASKS["t2v-A14B"]).guidance
    low, high = scale
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
                 callback=steps.append, **slg)  # fmt: skip
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
        assert video.metadata.get("guidance", "cfg") == str(guidance)
        assert ("slg" in video.metadata) == bool(slg)


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


def test_slg_steps_and_its_third_pass():
    rule = SkipLayers((1,))  # diffusers' defaults: the steps strictly after int(0.01 N) and before int(0.2 N)
    assert [i for i in range(20) if rule.runs_at(i, 20)] == [1, 2, 3]
    assert not any(rule.runs_at(i, 8) for i in range(8))  # 8 steps: int(1.6) = 1, so none
    pipe = WanPipeline.from_builtin("t2v-A14B")
    calls = []
    handles = [m.register_forward_hook(lambda m, a, k, out: calls.append(k.get("skip_blocks", ())), with_kwargs=True)
               for m in pipe.experts.values()]  # fmt: skip
    call = dict(steps=20, seed=3, slg_layers="1")
    pipe(PROMPT, **call)
    assert calls.count((1,)) == 3 and len(calls) == 23  # 20 batched CFG forwards, 3 without block 1
    for h in handles:
        h.remove()
    plain = pipe(PROMPT, steps=20, seed=3).frames
    assert torch.equal(pipe(PROMPT, slg_scale=0.0, **call).frames, plain)  # scale 0: the third pass adds exact zeros
    assert (pipe(PROMPT, slg_scale=3.0, **call).frames - plain).abs().max() > 0.01
    last = pipe.dit_cfg.num_layers - 1
    with pytest.raises(ValueError, match=rf"slg_layers \[{last + 1}\]: this DiT has blocks 0..{last}"):
        pipe(PROMPT, steps=2, slg_layers=[last + 1])


def expert_inputs(seed: int) -> tuple[torch.nn.Module, torch.Tensor, Conditioning]:
    """The built-in t2v model's high-noise expert, random latents (1, C, 3, 8, 8) and random prompt and negative
    states, from ``seed``."""
    pipe = WanPipeline.from_builtin("t2v-A14B")
    model = pipe.experts["high"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, pipe.vae.cfg.z_dim, 3, 8, 8, generator=g)
    text = (1, model.cfg.text_len, model.cfg.text_dim)
    return model, x, Conditioning(torch.randn(*text, generator=g), torch.randn(*text, generator=g))


def test_slg_velocity_in_closed_form():
    """``v + s (v_c - v_skip)`` on top of the rule's velocity, at guidance 1 too (ComfyUI's form; diffusers' guider
    takes ``v_skip + s (v_c - v_skip)`` when guidance is exactly 1, which is not its CFG form's limit)."""
    model, x, cond = expert_inputs(seed=0)
    t = torch.tensor([900])
    rule = Guidance("cfg_zero_star", 0, SkipLayers((0,), scale=2.5))
    with torch.no_grad():
        v_c, v_u = model(x, t, cond.context), model(x, t, cond.context_null)
        v_skip = model(x, t, cond.context, skip_blocks=(0,))
        for scale, base in ((1.0, v_c), (4.0, rule.combine(v_c, v_u, 4.0))):
            ours = guided_velocity(model, x, t, cond, scale, batch_cfg=False, guidance=rule, skip=((0,), ()))
            assert torch.allclose(ours, base + 2.5 * (v_c - v_skip), atol=1e-6)
            assert (v_c - v_skip).abs().max() > 0.01


def test_slg_uncond_mode_weakens_the_unconditional_pass():
    """ComfyUI's ``SkipLayerGuidanceDiTSimple``: on SLG's steps the unconditional pass leaves the blocks out and no
    third pass runs, ``v_u' + g (v_c - v_u')`` (the batched CFG forward is split for it); nothing at guidance 1."""
    model, x, cond = expert_inputs(seed=1)
    t = torch.tensor([700])
    request = resolve(GenerateOptions(PROMPT, slg_layers="1", slg_mode="uncond", slg_start=0.0), TASKS["t2v-A14B"])
    rule = request.guidance
    assert rule.skipped_layers(1, 20) == ((), (1,)) and rule.skipped_layers(0, 20) == ((), ())
    with torch.no_grad():
        v_c, v_u = model(x, t, cond.context), model(x, t, cond.context_null, skip_blocks=(1,))
        ours = guided_velocity(model, x, t, cond, 4.0, guidance=rule, skip=((), (1,)))  # (batch_cfg: split here)
        assert torch.allclose(ours, v_u + 4.0 * (v_c - v_u), atol=1e-5)
        plain = guided_velocity(model, x, t, cond, 4.0)
        assert (ours - plain).abs().max() > 0.01
        assert torch.equal(guided_velocity(model, x, t, cond, 1.0, guidance=rule, skip=((), (1,))), v_c)
    assert request.metadata()["slg"] == {"layers": [1], "start": 0.0, "stop": 0.2, "mode": "uncond"}


def test_slg_by_comfyuis_percent_window():
    """ComfyUI's skip layer guidance nodes run on the steps whose sigma lies between ``percent_to_sigma`` of their
    start and end percent (``shift(1 - p)``; 1 at 0, 0 at 1), both ends in: ``slg_percent`` at the run's shift. The
    steps so picked reach the model as the same steps picked by fractions do (the frames equal bit for bit)."""
    assert comfy_window(0.0, 1.0, 8.0) == (1.0, 0.0)
    high, low = comfy_window(0.01, 0.15, 8.0)
    assert high == 8 * 0.99 / (1 + 7 * 0.99) and low == 8 * 0.85 / (1 + 7 * 0.85)
    rule = SkipLayers((1,), window=(high, low))
    assert [rule.runs_at(0, 4, s) for s in (1.0, high, 0.99, low, low - 1e-9)] == [False, True, True, True, False]
    with pytest.raises(ValueError, match="needs the step's sigma"):
        rule.runs_at(1, 4)
    pipe = WanPipeline.from_builtin("t2v-A14B")
    steps, call = [], dict(steps=12, seed=3, scheduler="simple", shift=3.0, slg_layers="1", slg_scale=3.0)
    windowed = pipe(PROMPT, slg_percent="0.01,0.5", callback=steps.append, **call)
    picked = [s.index for s in steps if s.guidance.skipped_layers(s.index, s.total, s.sigma) != ((), ())]
    high, low = comfy_window(0.01, 0.5, 3.0)
    sigmas = comfy_schedule("simple", 12, 3.0).sigmas.tolist()
    assert low == 0.75 == sigmas[6]  # (the window's end falls on a step: both ends are in)
    assert picked == [i for i in range(12) if low <= sigmas[i] <= high] == [1, 2, 3, 4, 5, 6]  # (sigma 1 is above)
    by_steps = pipe(PROMPT, slg_start=0.05, slg_stop=0.6, **call)  # (int(0.6) = 0 < k < int(7.2) = 7)
    assert torch.equal(windowed.frames, by_steps.frames)
    assert (windowed.frames - pipe(PROMPT, **{**call, "slg_layers": None, "slg_scale": None}).frames).abs().max() > 0.01
    assert windowed.metadata["slg"] == {"layers": [1], "sigmas": [high, low], "mode": "pass", "scale": 3.0}
    simple = resolve(GenerateOptions(PROMPT, slg_layers="9", slg_mode="uncond", slg_percent=[0, 1]), TASKS["t2v-A14B"])
    assert simple.guidance.slg.window == (1.0, 0.0) and simple.guidance.skipped_layers(0, 4, 1.0) == ((), (9,))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(slg_percent="0,1"), r"\['slg_percent'\] set skip layer guidance's details"),
        (dict(slg_layers="1", slg_percent="0.5,0.2"), "0 <= START <= END <= 1"),
        (dict(slg_layers="1", slg_percent="0.5"), "slg_percent is START,END"),
        (dict(slg_layers="1", slg_percent="0,1", slg_stop=0.5), "give it or slg_start / slg_stop, not both"),
        (dict(slg_scale=2.0), r"\['slg_scale'\] set skip layer guidance's details"),
        (dict(slg_layers="a,b"), "slg_layers are block indices such as '9,10'"),
        (dict(slg_layers=[-1]), r"slg_layers are block indices \(0, 1, ...\)"),
        (dict(slg_layers="1", slg_start=0.5, slg_stop=0.2), "0 <= start <= stop <= 1"),
        (dict(slg_layers="1", slg_scale="2"), "slg_scale must be a number"),
        (dict(slg_layers="1", slg_mode="uncond", slg_scale=2.0), "slg_mode uncond has none"),
        (dict(slg_layers="1", slg_mode="third"), "slg_mode is one of pass, uncond"),
        (dict(slg_mode="uncond"), r"\['slg_mode'\] set skip layer guidance's details"),
    ],
)
def test_slg_refusals(options, message):
    with pytest.raises(ValueError, match=message):
        resolve(GenerateOptions(PROMPT, **options), TASKS["t2v-A14B"])


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
    slg = GenerateRequest(prompt=PROMPT, slg_layers="9,10", slg_scale=3, slg_start=0.1, slg_stop=0.5).options()
    assert (slg.slg_layers, slg.slg_scale, slg.slg_start, slg.slg_stop) == ("9,10", 3, 0.1, 0.5)
