"""``WanPipeline.save_pretrained``: a saved pipeline loads back to the same frames in either layout, with its task's
defaults; a LoRA fused into the weights is in the saved checkpoint (diffusers' own pipeline reads the folder and gives
the fused pipeline's frames); FP8 layers are written as the weights they compute with; what cannot be saved as it is
is refused in one line."""

import json
import logging

import pytest
import torch
from diffusers import WanPipeline as DiffusersWan
from safetensors.torch import save_file

from tests.checkpoints.test_single_file import comfy_folder
from tests.pipelines.test_parity import ReferenceUniPC
from tests.tiny.checkpoint import TINY_DITS, write_official_checkpoint
from tests.tiny.lora import make_lora
from wanflow.checkpoints.layouts import DEFAULTS_FILE, detect_layout
from wanflow.checkpoints.save import task_defaults
from wanflow.pipelines.diffusers_parts import shard_bytes
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.quantized import stored_layers
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def builtin():
    return WanPipeline.from_builtin("t2v-A14B")


@pytest.mark.parametrize("layout", ["diffusers", "official"])
def test_a_saved_pipeline_loads_back_to_the_same_frames(builtin, tmp_path, layout):
    before = builtin(PROMPT, steps=3, seed=2)  # the built-in's own defaults: 64x64, 9 frames
    folder = builtin.save_pretrained(tmp_path / "saved", layout=layout, max_shard_size="200KB")
    assert detect_layout(folder).kind == layout and (folder / DEFAULTS_FILE).is_file()
    assert len(list(folder.rglob("*.safetensors*"))) > 2  # sharded at 200 kB
    again = WanPipeline.from_pretrained(folder)
    assert again.task == builtin.task  # the task's defaults travel with the weights
    assert torch.equal(again(PROMPT, steps=3, seed=2).frames, before.frames)


def test_a_moved_boundary_and_shift_reach_diffusers_model_index(tiny, tmp_path):
    """The defaults a pipeline runs with are those diffusers reads from the saved folder: model_index.json's
    boundary_ratio and the scheduler's flow_shift (they were the published model's before)."""
    pipe = WanPipeline.from_pretrained(tiny / "official", boundary_ratio=0.95)
    folder = pipe.save_pretrained(tmp_path / "moved")
    theirs = DiffusersWan.from_pretrained(folder)
    assert theirs.config.boundary_ratio == 0.95 and theirs.scheduler.config.flow_shift == pipe.task.shift
    builtin = WanPipeline.from_builtin("ti2v-5B")  # its own shift, from its wanflow.json
    saved = builtin.save_pretrained(tmp_path / "builtin")
    assert json.loads((saved / "scheduler" / "scheduler_config.json").read_text())["flow_shift"] == builtin.task.shift
    assert builtin.task.shift != TASKS["ti2v-5B"].shift


def test_a_set_scheduler_is_saved_for_diffusers(tiny, tmp_path):
    """``pipe.scheduler`` set to diffusers' FlowMatchEuler: the saved folder names it, and diffusers' pipeline loaded
    from the folder alone makes wanflow's frames; a subclass (whose grid is its own code) is not written."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = WanPipeline.from_pretrained(tiny / "official", scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    folder = pipe.save_pretrained(tmp_path / "euler")
    theirs = DiffusersWan.from_pretrained(folder)
    assert type(theirs.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and theirs.scheduler.config.shift == 5
    theirs.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPT, negative_prompt=TASKS["t2v-A14B"].negative_prompt, height=64, width=64, num_frames=9)
    call.update(num_inference_steps=4, guidance_scale=1.0, output_type="pt")
    with torch.no_grad():
        b = theirs(**call, generator=torch.Generator().manual_seed(2)).frames
    a = pipe(**call, generator=torch.Generator().manual_seed(2)).frames
    assert (a - b).abs().max() <= 1e-4 and a.std() > 0.05
    pipe.scheduler = None
    pipe.scheduler = ReferenceUniPC.from_config(pipe.scheduler.config)  # (the reference's config, on its grid)
    other = pipe.save_pretrained(tmp_path / "subclass")
    assert json.loads((other / "scheduler" / "scheduler_config.json").read_text())["flow_shift"] == pipe.task.shift


def test_task_defaults_round_trip_through_json():
    task = TASKS["i2v-A14B"]
    assert task.with_overrides(task_defaults(task)) == task


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-save")
    write_official_checkpoint(root / "official", "t2v-A14B", seed=11)
    state, _ = make_lora("wan", TINY_DITS["t2v-A14B"], 5)
    save_file(state, root / "lora.safetensors")
    return root


def test_a_fused_lora_is_saved_and_diffusers_reads_the_folder(tiny, tmp_path):
    """The way to a checkpoint with a LoRA built in (a 4-step LoRA, say): fuse, unload, save; diffusers' pipeline
    loads the folder and makes the fused pipeline's frames."""
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    pipe = WanPipeline.from_pretrained(tiny / "official")
    plain = pipe(PROMPT, size=(64, 64), frames=9, steps=4, seed=3).frames
    pipe.load_lora_weights(str(tiny / "lora.safetensors"), adapter_name="fast")
    pipe.fuse_lora(lora_scale=0.8)
    pipe.unload_lora_weights()
    fused = pipe(PROMPT, size=(64, 64), frames=9, steps=4, seed=3).frames
    assert (fused - plain).abs().max() > 1e-3  # the LoRA changed the high-noise expert
    folder = pipe.save_pretrained(tmp_path / "fused")
    reloaded = WanPipeline.from_pretrained(folder)
    assert torch.equal(reloaded(PROMPT, size=(64, 64), frames=9, steps=4, seed=3).frames, fused)
    assert json.loads((folder / DEFAULTS_FILE).read_text())["merged_loras"] == {"high": ["fast:0.8"]}
    again = reloaded.save_pretrained(tmp_path / "again", layout="official")  # the record travels on
    assert json.loads((again / DEFAULTS_FILE).read_text())["merged_loras"] == {"high": ["fast:0.8"]}
    theirs = DiffusersWan.from_pretrained(folder)
    theirs.scheduler = ReferenceUniPC.from_config(theirs.scheduler.config)  # the reference's grid, as wanflow's
    theirs.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPT, negative_prompt=TASKS["t2v-A14B"].negative_prompt, height=64, width=64, num_frames=9)
    call.update(num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0, output_type="pt")
    with torch.no_grad():
        out = theirs(**call, generator=torch.Generator().manual_seed(3)).frames
    ours = pipe(**call, generator=torch.Generator().manual_seed(3)).frames
    assert (out - ours).abs().max() <= 1e-4 and ours.std() > 0.05


def test_fp8_layers_are_saved_as_the_weights_they_compute_with(tmp_path):
    pipe = WanPipeline.from_builtin("ti2v-5B", fp8=True)
    before = pipe(PROMPT, steps=2, seed=1).frames
    folder = pipe.save_pretrained(tmp_path / "fp8", layout="official")
    again = WanPipeline.from_pretrained(folder)  # plain float weights now
    assert torch.equal(again(PROMPT, steps=2, seed=1).frames, before)


def test_a_pipeline_of_single_files_is_saved_with_float_weights(tmp_path):
    """GGUF experts and an FP8 umT5 (ComfyUI's files): every quantised layer written as the weights it computes
    with, so the saved folder makes the same frames."""
    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    comfy_folder(ckpt, tmp_path / "models")
    pipe = WanPipeline.from_pretrained(tmp_path / "models")
    assert stored_layers(pipe.text_encoder.model) and stored_layers(pipe.experts["low"])  # quantised in memory
    before = pipe(PROMPT, size=(64, 48), frames=5, steps=2, seed=3).frames
    folder = pipe.save_pretrained(tmp_path / "saved")
    again = WanPipeline.from_pretrained(folder)
    assert not stored_layers(again.text_encoder.model) and not stored_layers(again.experts["low"])
    assert torch.equal(again(PROMPT, size=(64, 48), frames=5, steps=2, seed=3).frames, before)


def test_what_cannot_be_saved_is_refused(tiny, tmp_path):
    pipe = WanPipeline.from_pretrained(tiny / "official")
    pipe.load_lora(tiny / "lora.safetensors", expert="high")  # beside the weights
    with pytest.raises(ValueError, match=r"run beside the weights, not in them: fuse them first"):
        pipe.save_pretrained(tmp_path / "x")
    pipe.unload_lora()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("")
    with pytest.raises(ValueError, match="is not an empty folder"):
        pipe.save_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match="unknown layout 'comfy'"):
        pipe.save_pretrained(tmp_path / "y", layout="comfy")


def test_shard_sizes_in_diffusers_spelling():
    assert shard_bytes("10GB") == 10**10 and shard_bytes("500MB") == 5 * 10**8 and shard_bytes("2GiB") == 2 * 2**30
    assert shard_bytes(1234) == 1234
    with pytest.raises(ValueError, match="max_shard_size"):
        shard_bytes("lots")
