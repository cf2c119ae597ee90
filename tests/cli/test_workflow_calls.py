"""``wanflow generate --workflow`` on the community's "three KSampler" Wan 2.2 layout: the high-noise model without
the step-distillation LoRA at guidance 3.5 for the first steps, then with it at guidance 1, then the low-noise model
with its own; each KSamplerAdvanced a sampler call (``--sampler_calls``), with its guidance, seed and LoRA
strengths. The workflow's video is the Python API's of the same calls, frame for frame."""

import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.checkpoints.test_single_file import SMALL_T2V
from tests.cli.test_single_files import comfy_models
from tests.cli.test_workflow import HIGH, LOW, NEGATIVE, node, relink, t2v, write
from tests.tiny.lora import make_lora
from wanflow.cli import main
from wanflow.cli.workflow import workflow_arguments
from wanflow.pipelines.pipeline import WanPipeline


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A ComfyUI folder: ``models/`` with a tiny T2V-A14B's files under ComfyUI's names."""
    return comfy_models(tmp_path_factory.mktemp("comfy"))


def three_samplers(comfy, sampler="euler"):
    """ComfyUI's T2V template made the three-sampler recipe: 6 steps, the high-noise model alone (cfg 3.5) for steps
    0-2, through a LoRA loader (cfg 1) for 2-4, the low-noise model through its LoRA loader (cfg 1) from 4."""
    folder = comfy / "models" / "loras"
    folder.mkdir(exist_ok=True)
    for name, seed in (("fast_high", 5), ("fast_low", 6)):
        save_file(make_lora("lightx2v", SMALL_T2V, seed)[0], folder / f"{name}.safetensors")
    w = t2v(high=(0, 2), low=(4, 10000), steps=6, sampler=sampler)
    w.add(63, "LoraLoaderModelOnly", ["fast_high.safetensors", 1.0], model=(37, 0))
    w.add(62, "ModelSamplingSD3", [8], model=(63, 0))
    w.add(64, "LoraLoaderModelOnly", ["fast_low.safetensors", 1.0], model=(56, 0))
    relink(w, 55, "model", 64)
    w.add(61, "KSamplerAdvanced", ["disable", 4, "fixed", 6, 1.0, sampler, "simple", 2, 4, "enable"],
          model=(62, 0), positive=(6, 0), negative=(7, 0), latent_image=(57, 0))  # fmt: skip
    relink(w, 58, "latent_image", 61)
    node(w, 58)["widgets_values"][4] = 1.0  # the low-noise call's cfg
    return w


def pixels(path):
    return Image.open(path).tobytes()


def flag(args, name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_three_samplers_run_as_three_calls(comfy, tmp_path):
    path = write(tmp_path, three_samplers(comfy).json())
    args = workflow_arguments(path, str(comfy))
    loras = comfy / "models" / "loras"
    assert flag(args, "--sampler_calls") == ["2,4"] and flag(args, "--switch_step") == ["4"]
    assert flag(args, "--call_guide_scale") == ["3.5,1,1"] and flag(args, "--sample_guide_scale") == ["1,3.5"]
    assert flag(args, "--lora_high") == [f"{loras / 'fast_high.safetensors'}:0,1"]  # (off in the first call)
    assert flag(args, "--lora_low") == [f"{loras / 'fast_low.safetensors'}:1"]
    assert "--call_seeds" not in args  # (euler draws no step noise)
    tokenizer = str(comfy / "models" / "text_encoders" / "tokenizer")
    out = tmp_path / "workflow"
    assert main(["generate", "--workflow", str(path), "--comfy_dir", str(comfy), "--tokenizer", tokenizer,
                 "--save_file", f"{out}/"]) == 0  # fmt: skip
    m = comfy / "models"
    pipe = WanPipeline.from_single_files(m / "diffusion_models" / HIGH, m / "diffusion_models" / LOW,
                                         m / "vae" / "wan_2.1_vae.safetensors",
                                         m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", tokenizer,
                                         task="t2v-A14B", device="cpu")  # fmt: skip
    pipe.load_lora(loras / "fast_high.safetensors", 0.0, expert="high", name="high")
    pipe.load_lora(loras / "fast_low.safetensors", 1.0, expert="low", name="low")
    video = pipe("a red circle moving right", negative_prompt=NEGATIVE, size=(64, 48), frames=5, steps=6,
                 solver="euler", scheduler="simple", shift=8.0, switch_step=4, sampler_calls=[2, 4],
                 call_guide_scale=[3.5, 1, 1], call_loras={"high": [0, 1]}, seed=3, noise_device="cpu")  # fmt: skip
    video.save(f"{tmp_path / 'python'}/")
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 5
    assert all(pixels(f) == pixels(tmp_path / "python" / f.name) for f in frames)
    for strength in (0.0, 1.0):  # (the LoRA in no high-noise call, or in both: other videos)
        pipe.set_lora_strength("high", strength)
        other = pipe("a red circle moving right", negative_prompt=NEGATIVE, size=(64, 48), frames=5, steps=6,
                     solver="euler", scheduler="simple", shift=8.0, switch_step=4, sampler_calls=[2, 4],
                     call_guide_scale=[3.5, 1, 1], seed=3, noise_device="cpu")  # fmt: skip
        assert not (other.frames == video.frames).all()


@pytest.mark.parametrize("sampler", ["euler_ancestral", "res_multistep_ancestral"])
def test_each_calls_seed_for_the_samplers_that_draw_noise(comfy, tmp_path, sampler):
    """An ancestral sampler's step noise comes from each KSamplerAdvanced's noise_seed: the later calls' seeds."""
    w = three_samplers(comfy, sampler=sampler)
    node(w, 61)["widgets_values"][1] = 11
    node(w, 58)["widgets_values"][1] = 12
    args = workflow_arguments(write(tmp_path, w.json()), str(comfy))
    assert flag(args, "--call_seeds") == ["11,12"] and flag(args, "--base_seed") == ["3"]
    assert flag(args, "--sample_solver") == [sampler]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda w: node(w, 61)["widgets_values"].__setitem__(7, 3),
            "do not split one run",
        ),  # (starts at 3: the one before ends at 2)
        (lambda w: node(w, 61)["widgets_values"].__setitem__(0, "enable"), "do not split one run"),
        (lambda w: node(w, 61)["widgets_values"].__setitem__(3, 8), "the samplers differ in steps"),
        (lambda w: (relink(w, 62, "model", 64), relink(w, 55, "model", 63)), "then the low-noise one's"),  # (l in h)
        (lambda w: node(w, 62)["widgets_values"].__setitem__(0, 5), "different ModelSamplingSD3 shifts"),
    ],
)
def test_chains_wanflow_cannot_run_as_comfyui_does(comfy, tmp_path, change, message):
    w = three_samplers(comfy)
    change(w)
    with pytest.raises(ValueError, match=message):
        workflow_arguments(write(tmp_path, w.json()), str(comfy))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: drop(drop(a, "--sampler_calls"), "--call_guide_scale"),
            "a strength for each sampler call needs sampler_calls",
        ),
        (lambda a: [*a, "--lora_merge"], "not --lora_merge"),
        (lambda a: [x.replace(":0,1", ":0,1,1") for x in a], "3 strengths for the 2 sampler calls of its experts"),
    ],
)
def test_per_call_strengths_are_checked_before_loading(comfy, tmp_path, capsys, change, message):
    args = change(workflow_arguments(write(tmp_path, three_samplers(comfy).json()), str(comfy)))
    tokenizer = str(comfy / "models" / "text_encoders" / "tokenizer")
    assert main(["generate", *args, "--tokenizer", tokenizer, "--save_file", str(tmp_path / "a.gif")]) == 2
    assert message in capsys.readouterr().err


def drop(args, name):
    i = args.index(name)
    return args[:i] + args[i + 2 :]
