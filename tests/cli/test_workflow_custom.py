"""ComfyUI's custom sampling nodes (``cli/workflow_custom.py``): a workflow that samples with SamplerCustomAdvanced
(noise, guider, sampler and sigmas nodes, the experts split by SplitSigmas or SplitSigmasDenoise) or SamplerCustom
gives the flags of the same workflow laid out with KSamplerAdvanced / KSampler, which ComfyUI runs the same way; what
it would run otherwise is an error naming the node."""

from __future__ import annotations

import pytest
import torch

from tests.cli.test_workflow import (  # noqa: F401 (the fixture)
    HIGH,
    LOW,
    NEGATIVE,
    Editor,
    api,
    comfy,
    node,
    relink,
    t2v,
    write,
)  # fmt: skip
from wanflow.cli import main
from wanflow.cli.workflow import workflow_arguments
from wanflow.sampling.comfy_schedules import comfy_sigmas


def loaders(w: Editor) -> Editor:
    """t2v()'s text, VAE, model and latent nodes (same ids)."""
    w.add(38, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"])
    w.add(6, "CLIPTextEncode", ["a red circle moving right"], clip=(38, 0))
    w.add(7, "CLIPTextEncode", [NEGATIVE], clip=(38, 0))
    w.add(39, "VAELoader", ["wan_2.1_vae.safetensors"])
    w.add(37, "UnetLoaderGGUF", [HIGH]).add(56, "UnetLoaderGGUF", [LOW])
    w.add(54, "ModelSamplingSD3", [8.000000000000002], model=(37, 0)).add(55, "ModelSamplingSD3", [8], model=(56, 0))
    return w.add(59, "EmptyHunyuanLatentVideo", [64, 48, 5, 1])


def custom(split=("SplitSigmas", [2]), sampler="euler", guider="CFGGuider"):
    """t2v() sampled as Wan 2.2 workflows do with custom sampling: one BasicScheduler on the high-noise model, split
    between two SamplerCustomAdvanced nodes, each with its guider; noise added by the first only."""
    w = loaders(Editor())
    w.add(70, "BasicScheduler", ["simple", 4, 1.0], model=(54, 0)).add(71, split[0], split[1], sigmas=(70, 0))
    w.add(72, "KSamplerSelect", [sampler]).add(73, "RandomNoise", [3, "fixed"]).add(74, "DisableNoise")
    if guider == "CFGGuider":
        w.add(75, "CFGGuider", [3.5], model=(54, 0), positive=(6, 0), negative=(7, 0))
        w.add(76, "CFGGuider", [3.0], model=(55, 0), positive=(6, 0), negative=(7, 0))
    else:
        w.add(75, guider, [], model=(54, 0), conditioning=(6, 0)).add(
            76, guider, [], model=(55, 0), conditioning=(6, 0)
        )
    w.add(57, "SamplerCustomAdvanced", [], noise=(73, 0), guider=(75, 0), sampler=(72, 0), sigmas=(71, 0),
          latent_image=(59, 0))  # fmt: skip
    w.add(58, "SamplerCustomAdvanced", [], noise=(74, 0), guider=(76, 0), sampler=(72, 0), sigmas=(71, 1),
          latent_image=(57, 0))  # fmt: skip
    return w.add(8, "VAEDecode", samples=(58, 0), vae=(39, 0)).add(60, "CreateVideo", [16], images=(8, 0))


def test_custom_sampling_is_its_ksamplers(comfy, tmp_path):  # noqa: F811 (the fixture)
    expected = workflow_arguments(write(tmp_path, t2v().json(), "k.json"), str(comfy))
    assert workflow_arguments(write(tmp_path, custom().json()), str(comfy)) == expected
    assert workflow_arguments(write(tmp_path, api(custom()), "api.json"), str(comfy)) == expected
    # SplitSigmasDenoise at 0.5 of 4 steps: the last round(4 * 0.5) = 2 for the low-noise expert
    halves = custom(split=("SplitSigmasDenoise", [0.5]))
    assert workflow_arguments(write(tmp_path, halves.json()), str(comfy)) == expected
    quarter = custom(split=("SplitSigmasDenoise", [0.25]))
    args = workflow_arguments(write(tmp_path, quarter.json()), str(comfy))
    assert args[args.index("--switch_step") + 1] == "3"
    # lcm draws each call's step noise from that call's seed: the second KSamplerAdvanced's noise_seed, DisableNoise's 0
    lcm = workflow_arguments(write(tmp_path, t2v(sampler="lcm").json(), "l.json"), str(comfy))
    assert lcm[lcm.index("--low_noise_seed") + 1] == "0" and "--low_noise_seed" not in expected
    assert workflow_arguments(write(tmp_path, custom(sampler="lcm").json()), str(comfy)) == lcm
    # ComfyUI's ddim is its euler: the same flags
    assert workflow_arguments(write(tmp_path, t2v(sampler="ddim").json(), "d.json"), str(comfy)) == expected
    # so do the SDE samplers their Brownian trees; their first sigma moved off 1 in both layouts alike
    sde = workflow_arguments(write(tmp_path, t2v(sampler="dpmpp_3m_sde_gpu").json(), "s.json"), str(comfy))
    assert sde[sde.index("--low_noise_seed") + 1] == "0" and sde[sde.index("--sample_solver") + 1] == "dpmpp_3m_sde_gpu"
    assert workflow_arguments(write(tmp_path, custom(sampler="dpmpp_3m_sde_gpu").json()), str(comfy)) == sde
    # uni_pc: KSampler drops the penultimate of one sigma more, BasicScheduler does not: its sigmas go as they are
    given = workflow_arguments(write(tmp_path, custom(sampler="uni_pc").json()), str(comfy))
    sigmas = [float(v) for v in given[given.index("--sigmas") + 1].split(",")]
    assert torch.equal(torch.tensor(sigmas), comfy_sigmas("simple", 4, 8.0))
    assert not {"--scheduler", "--sample_steps", "--sample_shift"} & set(given)
    assert given[given.index("--switch_step") + 1] == "2" and given[given.index("--sample_solver") + 1] == "uni_pc"
    out = tmp_path / "uni_pc.gif"
    tokenizer = ["--tokenizer", str(comfy / "models" / "text_encoders" / "tokenizer")]
    argv = ["generate", "--workflow", str(tmp_path / "workflow.json"), "--comfy_dir", str(comfy), *tokenizer]
    assert main([*argv, "--save_file", str(out)]) == 0 and out.stat().st_size > 0
    basic = workflow_arguments(write(tmp_path, custom(guider="BasicGuider").json()), str(comfy))
    assert basic[basic.index("--sample_guide_scale") + 1] == "1,1" and "--negative_prompt" not in basic


def test_sampler_custom_is_a_ksampler(comfy, tmp_path):  # noqa: F811
    """One SamplerCustom over a whole BasicScheduler: the KSampler of the same settings."""
    w = loaders(Editor())
    w.add(3, "KSampler", [5, "fixed", 6, 4.0, "dpmpp_2m", "beta", 1.0],
          model=(54, 0), positive=(6, 0), negative=(7, 0), latent_image=(59, 0))  # fmt: skip
    w.add(8, "VAEDecode", samples=(3, 0), vae=(39, 0))
    expected = workflow_arguments(write(tmp_path, w.json(), "k.json"), str(comfy))
    w = loaders(Editor())
    w.add(70, "BasicScheduler", ["beta", 6, 1.0], model=(54, 0)).add(72, "KSamplerSelect", ["dpmpp_2m"])
    w.add(3, "SamplerCustom", [True, 5, "fixed", 4.0], model=(54, 0), positive=(6, 0), negative=(7, 0),
          sampler=(72, 0), sigmas=(70, 0), latent_image=(59, 0))  # fmt: skip
    w.add(8, "VAEDecode", samples=(3, 0), vae=(39, 0))
    assert workflow_arguments(write(tmp_path, w.json()), str(comfy)) == expected
    node(w, 3)["widgets_values"][0] = False
    with pytest.raises(ValueError, match="adds no noise"):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


def _decoding_the_denoised_output():
    w = custom()
    link = next(lk for lk in w.links if lk[3] == 8 and lk[1] == 58)
    link[2] = 1
    return w


def _scheduled_on_another_shift():
    w = custom()
    w.add(77, "ModelSamplingSD3", [5], model=(37, 0))
    link = next(lk for lk in w.links if lk[3] == 70)
    link[1] = 77
    return w


def _karras_sigmas():
    w = custom()
    w.add(78, "KarrasScheduler", [4, 14.6, 0.03, 7.0])
    next(lk for lk in w.links if lk[3] == 71)[1] = 78
    return w


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_decoding_the_denoised_output, "reads the denoised_output of node 58"),
        (_scheduled_on_another_shift, "node 70 .*'s model has another shift"),
        (_karras_sigmas, r"the sigmas come from node 78 \(KarrasScheduler\)"),
        (lambda: custom(guider="DualCFGGuider"), "the guider is node 75 .DualCFGGuider."),
        (lambda: custom(split=("SplitSigmas", [0])), "do not split one run"),
    ],
)
def test_what_custom_sampling_would_run_otherwise_is_an_error(comfy, tmp_path, build, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        workflow_arguments(write(tmp_path, build().json()), str(comfy))


def test_skip_layer_guidance_beside_custom_uni_pc_sigmas_is_an_error(comfy, tmp_path):  # noqa: F811 (the fixture)
    """SLG's window is in the model's percent, read at the run's shift, which BasicScheduler's sigmas given as they
    are (custom sampling's uni_pc) leave out: an error; with euler it runs on the steps as KSamplerAdvanced's."""
    for sampler in ("euler", "uni_pc"):
        w = custom(sampler=sampler)
        for guider, sampling, node_id in ((75, 54, 80), (76, 55, 81)):
            w.add(node_id, "SkipLayerGuidanceDiT", ["1", "", 3.0, 0.01, 0.5, 0.0], model=(sampling, 0))
            relink(w, guider, "model", node_id)
        path = write(tmp_path, w.json())
        if sampler == "uni_pc":
            with pytest.raises(ValueError, match="skip layer guidance beside uni_pc on BasicScheduler's sigmas"):
                workflow_arguments(path, str(comfy))
        else:
            assert "--slg_percent" in workflow_arguments(path, str(comfy))
