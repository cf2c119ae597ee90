"""``from_pretrained(..., transformer=, transformer_2=)``, diffusers' way to bring its own DiT: a diffusers
``WanTransformer3DModel`` (changed weights are the ones used: the frames are diffusers' own pipeline's, given the same
module) or a GGUF-quantised one from diffusers' ``from_single_file`` (kept quantised: the frames are those of the same
GGUF files read by wanflow, bit for bit, and diffusers' within 1e-4); a module that does not fit is one clear error."""

import json
import shutil

import gguf
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, GGUFQuantizationConfig, WanTransformer3DModel
from gguf import GGMLQuantizationType

from tests.tiny.checkpoint import write_both_layouts, write_dit, write_official_checkpoint
from tests.tiny.dit import random_dit_state
from tests.tiny.single_files import SMALL_T2V, write_gguf
from wanflow.checkpoints.convert import convert_checkpoint
from wanflow.checkpoints.io import CheckpointError
from wanflow.checkpoints.maps.dit import dit_config_to_diffusers
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.quantized import stored_layers
from wanflow.tasks import TASKS

TASK = "t2v-A14B"
CALL = dict(
    prompt="a red circle moving right",
    negative_prompt=TASKS[TASK].negative_prompt,
    height=64,
    width=64,
    num_frames=9,
    num_inference_steps=6,  # 4 on the high-noise expert, 2 on the low-noise one
    guidance_scale=4.0,
    guidance_scale_2=3.0,
    output_type="pt",
)


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(5)


def diffusers_pipe(folder, **components):
    from diffusers import WanPipeline as DiffusersWanPipeline

    pipe = DiffusersWanPipeline.from_pretrained(folder, **components)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # (wanflow's runs on the same: pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours_pipe(folder, **components) -> WanPipeline:
    return WanPipeline.from_pretrained(folder, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **components)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("modules")
    write_both_layouts(root, TASK, seed=13)
    return root


def test_a_diffusers_transformer_given_is_the_one_used(tiny):
    module = WanTransformer3DModel.from_pretrained(tiny / "diffusers", subfolder="transformer_2")
    with torch.no_grad():
        module.blocks[0].ffn.net[2].weight.mul_(1.5)  # a fine-tune of the low-noise expert, say
    ours = ours_pipe(tiny / "official", transformer_2=module)
    a = ours(generator=generator(), **CALL).frames
    with torch.no_grad():
        b = diffusers_pipe(tiny / "diffusers", transformer_2=module)(generator=generator(), **CALL).frames
    plain = ours_pipe(tiny / "official")(generator=generator(), **CALL).frames
    assert (a - b).abs().max() <= 1e-4 and a.std() > 0.05
    assert (a - plain).abs().max() > 1e-3  # the module's weights, not the checkpoint's
    assert ours.transformer_2.config.num_layers == module.config.num_layers


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory):
    """A two-expert checkpoint of 256-wide experts (GGUF Q8_0 rows are 32 weights), both layouts, the experts also as
    GGUF files, and diffusers' GGUF modules of those files."""
    root = tmp_path_factory.mktemp("gguf")
    write_official_checkpoint(root / "official", TASK, seed=3)
    (root / "config" / "transformer").mkdir(parents=True)
    (root / "config" / "transformer" / "config.json").write_text(json.dumps(dit_config_to_diffusers(SMALL_T2V)))
    modules = {}
    for i, (expert, component) in enumerate([("high", "transformer"), ("low", "transformer_2")]):
        state = random_dit_state(SMALL_T2V, 20 + i, scale=0.05)
        shutil.rmtree(root / "official" / f"{expert}_noise_model")  # (the tiny expert's shards)
        write_dit(SMALL_T2V, state, root / "official" / f"{expert}_noise_model")
        write_gguf(state, root / f"{expert}.gguf", SMALL_T2V, "Q8_0", seed=i)
        modules[component] = WanTransformer3DModel.from_single_file(
            str(root / f"{expert}.gguf"),
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=str(root / "config"),
            subfolder="transformer",
        )
    convert_checkpoint(root / "official", root / "diffusers")
    return root, modules


def test_diffusers_gguf_transformers_stay_quantised_and_give_the_files_frames(gguf_models):
    """The GGUF modules' blocks are the files' (frames bit for bit), dequantised exactly as the ``gguf`` package does.
    diffusers' own pipeline differs slightly here (4e-4 on these frames, measured by the last lines): its Q8_0
    dequantisation rounds ``d * q`` to float16 before the compute dtype (``diffusers.quantizers.gguf.utils``)."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    root, modules = gguf_models
    ours = ours_pipe(root / "official", **modules)
    assert set(stored_layers(ours.experts["high"]).values()) == {"Q8_0"}  # kept quantised, as from the file
    a = ours(generator=generator(), **CALL).frames
    files = WanPipeline.from_single_files(
        root / "high.gguf",
        root / "low.gguf",
        base=root / "official",
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    assert torch.equal(a, files(generator=generator(), **CALL).frames) and a.std() > 0.05
    given = modules["transformer_2"].blocks[1].ffn.net[2].weight
    exact = gguf.quants.dequantize(given.detach().as_subclass(torch.Tensor).numpy(), GGMLQuantizationType.Q8_0)
    assert torch.equal(ours.experts["low"].blocks[1].ffn[2].weight, torch.from_numpy(exact))
    assert not torch.equal(dequantize_gguf_tensor(given).float(), torch.from_numpy(exact))  # diffusers': float16
    with torch.no_grad():  # (these experts read 32 text tokens, which diffusers is told: it pads to 512 otherwise)
        b = diffusers_pipe(root / "diffusers", **modules)(generator=generator(), max_sequence_length=32, **CALL).frames
    assert 1e-5 < (a - b).abs().max() <= 1e-3  # only the float16 rounding of diffusers' weights between the two


def test_a_transformer_that_does_not_fit_is_one_error(tiny, gguf_models):
    modules = gguf_models[1]
    with pytest.raises(
        CheckpointError, match=r"transformer given is a t2v DiT of dim 256.*expert it replaces is a t2v DiT of dim 24"
    ):
        WanPipeline.from_pretrained(tiny / "official", transformer=modules["transformer"])
    with pytest.raises(TypeError, match="transformer must be diffusers' WanTransformer3DModel"):
        WanPipeline.from_pretrained(tiny / "official", transformer=torch.nn.Linear(2, 2))
    ti2v = tiny / "ti2v"
    write_official_checkpoint(ti2v, "ti2v-5B", seed=1)
    with pytest.raises(ValueError, match=r"no \['transformer_2'\]: its DiT components are \['transformer'\]"):
        WanPipeline.from_pretrained(ti2v, transformer_2=modules["transformer_2"])


def test_boundary_ratio_at_load_moves_the_switch_as_in_diffusers(tiny):
    """``from_pretrained(..., boundary_ratio=0.95)``: diffusers' pipeline setting for the switch between experts."""
    steps = []
    ours = ours_pipe(tiny / "official", boundary_ratio=0.95)
    a = ours(generator=generator(), callback=steps.append, **CALL).frames
    with torch.no_grad():
        b = diffusers_pipe(tiny / "diffusers", boundary_ratio=0.95)(generator=generator(), **CALL).frames
    assert (a - b).abs().max() <= 1e-4 and a.std() > 0.05
    high = [s for s in steps if s.expert == "high"]
    assert 0 < len(high) < 4 and all(s.timestep >= 950 for s in high)  # fewer high-noise steps than at 0.875
    with pytest.raises(ValueError, match=r"boundary_ratio is a fraction"):
        WanPipeline.from_pretrained(tiny / "official", boundary_ratio=1.5)
    with pytest.raises(ValueError, match=r"boundary_ratio: this checkpoint has one DiT"):
        WanPipeline.from_builtin("ti2v-5B", boundary_ratio=0.9)


def test_a_text_encoder_and_tokenizer_given_are_the_ones_used(tiny):
    """diffusers' ``text_encoder=`` / ``tokenizer=`` at load (transformers' modules, e.g. a umT5 kept in another dtype):
    used as they are; the same weights give the same frames, changed ones diffusers' frames with the same module."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder = UMT5EncoderModel.from_pretrained(tiny / "diffusers", subfolder="text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(tiny / "diffusers", subfolder="tokenizer")
    plain = ours_pipe(tiny / "official")(generator=generator(), **CALL).frames
    same = ours_pipe(tiny / "official", text_encoder=encoder, tokenizer=tokenizer)(generator=generator(), **CALL)
    assert torch.equal(same.frames, plain)
    with torch.no_grad():
        encoder.encoder.block[0].layer[1].DenseReluDense.wo.weight.mul_(3.0)
    a = ours_pipe(tiny / "official", text_encoder=encoder)(generator=generator(), **CALL).frames
    with torch.no_grad():
        b = diffusers_pipe(tiny / "diffusers", text_encoder=encoder)(generator=generator(), **CALL).frames
    assert (a - b).abs().max() <= 1e-4 and (a - plain).abs().max() > 1e-3
    with pytest.raises(TypeError, match="text_encoder must be transformers' UMT5EncoderModel"):
        WanPipeline.from_pretrained(tiny / "official", text_encoder=torch.nn.Linear(2, 2))
