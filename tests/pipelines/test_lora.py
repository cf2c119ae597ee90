"""LoRAs on the pipeline, end to end on tiny official-layout checkpoints: for every format the frames of the base
weights with the delta merged by hand (float32), and where diffusers reads the format the frames of diffusers'
``load_lora_weights`` (``load_into_transformer_2`` for the low-noise expert) on the same weights and latents."""

import json
import logging
import shutil

import pytest
import torch
from diffusers import WanPipeline as DiffusersWan
from safetensors.torch import save_file

from tests.pipelines.test_parity import diffusers_pipe
from tests.tiny.checkpoint import TINY_DITS, write_both_layouts, write_dit
from tests.tiny.lora import FORMATS, diffusers_subset, make_lora, merge_by_hand
from wanflow.checkpoints.io import read_folder
from wanflow.checkpoints.lora import LoraError, read_lora
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"
TASK = "t2v-A14B"
EXPERT_FOLDERS = {"high": "high_noise_model", "low": "low_noise_model"}
RUN = dict(size=(64, 64), frames=5, steps=4, guide_scale=(3.0, 4.5), seed=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    write_both_layouts(root, TASK, seed=11)
    return root


@pytest.fixture(scope="module")
def pipe(ckpt):
    return WanPipeline.from_pretrained(ckpt / "official", device="cpu")


def write_lora(root, fmt, seed=5, subset=False):
    state, deltas = make_lora(fmt, TINY_DITS[TASK], seed)
    if subset:
        state, deltas = diffusers_subset(state, deltas)
    path = root / f"{fmt}-{seed}{'-subset' if subset else ''}.safetensors"
    save_file(state, path)
    return path, deltas


def merged_by_hand(root, deltas, strength, name="merged"):
    """The official checkpoint with ``strength * delta`` added to each expert's weights in float32; ``deltas``: one
    {parameter: delta} for both experts, or {expert: {parameter: delta}}."""
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "official", out)
    per_expert = deltas if set(deltas) <= set(EXPERT_FOLDERS) else dict.fromkeys(EXPERT_FOLDERS, deltas)
    for expert, expert_deltas in per_expert.items():
        folder = out / EXPERT_FOLDERS[expert]
        state = merge_by_hand(read_folder(root / "official" / EXPERT_FOLDERS[expert]), expert_deltas, strength)
        shutil.rmtree(folder)
        write_dit(TINY_DITS[TASK], state, folder)
    return WanPipeline.from_pretrained(out, device="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_frames_of_the_delta_merged_by_hand(fmt, ckpt, pipe):
    path, deltas = write_lora(ckpt, fmt)
    want = merged_by_hand(ckpt, deltas, 0.8)(PROMPT, **RUN).frames
    base = pipe(PROMPT, **RUN).frames
    name = pipe.load_lora(path, 0.8)
    beside = pipe(PROMPT, **RUN).frames
    pipe.unload_lora(name)
    pipe.load_lora(path, 0.8, merge=True)
    merged = pipe(PROMPT, **RUN).frames
    pipe.unload_lora()
    assert (want - base).abs().max() > 0.3  # the LoRA changes the picture
    assert (beside - want).abs().max() <= 1e-5 and (merged - want).abs().max() <= 1e-5
    assert torch.equal(pipe(PROMPT, **RUN).frames, base)  # unloaded: the original weights, bit for bit


def diffusers_frames(ckpt, path, experts, noise):
    theirs = diffusers_pipe(DiffusersWan, ckpt / "diffusers", TASKS[TASK].shift)
    for expert in experts:  # diffusers: transformer = high-noise expert, transformer_2 = low-noise expert
        theirs.load_lora_weights(str(path), adapter_name="lora", load_into_transformer_2=expert == "low")
    with torch.no_grad():
        frames = theirs(
            PROMPT,
            negative_prompt=TASKS[TASK].negative_prompt,
            height=64,
            width=64,
            num_frames=5,
            num_inference_steps=4,
            latents=noise.clone(),
            output_type="pt",
            guidance_scale=4.5,
            guidance_scale_2=3.0,
        ).frames
    return frames[0].permute(1, 0, 2, 3) * 2 - 1  # (F, 3, H, W) in [0, 1] -> (3, F, H, W) in [-1, 1]


CASES = [  # (format, experts): every format diffusers reads, on both experts, and one expert at a time
    *((fmt, ("high", "low")) for fmt in ("wan", "wan-ab", "kohya", "diffusers", "lightx2v")),
    ("wan", ("high",)),
    ("kohya", ("low",)),
]


@pytest.mark.parametrize(("fmt", "experts"), CASES, ids=[f"{f}-{'+'.join(e)}" for f, e in CASES])
def test_formats_diffusers_reads_give_its_frames(fmt, experts, ckpt, pipe):
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    path, _ = write_lora(ckpt, fmt, subset=fmt == "lightx2v")  # diffusers drops diff_m and the norm deltas
    noise = pipe.noise((16, 2, 8, 8), seed=3)
    base = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    for expert in experts:
        pipe.load_lora(path, expert=expert, name=f"l-{expert}")
    ours = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    pipe.unload_lora()
    theirs = diffusers_frames(ckpt, path, experts, noise)
    # The pipelines differ by 1.6e-5 without any LoRA (test_parity allows 1e-4); the LoRA adds nothing measurable.
    assert (ours - theirs).abs().max() <= 1e-4 and (ours - base).abs().max() > 0.1


def test_one_expert_only_and_per_expert_folders(ckpt, pipe):
    path, deltas = write_lora(ckpt, "kohya", seed=7)
    high_before = {k: v.clone() for k, v in pipe.experts["high"].state_dict().items()}
    pipe.load_lora(path, 0.6, expert="low", merge=True)
    assert all(torch.equal(v, high_before[k]) for k, v in pipe.experts["high"].state_dict().items())
    low_only = pipe(PROMPT, **RUN).frames
    pipe.unload_lora()
    want = merged_by_hand(ckpt, {"low": deltas}, 0.6)(PROMPT, **RUN).frames
    assert (low_only - want).abs().max() <= 1e-5
    folder = ckpt / "Wan2.2-Lightning-like"  # high_noise_model / low_noise_model files, each on its expert
    folder.mkdir(exist_ok=True)
    high_path, high_deltas = write_lora(ckpt, "wan", seed=8)
    shutil.copy(high_path, folder / "high_noise_model.safetensors")
    shutil.copy(path, folder / "low_noise_model.safetensors")
    name = pipe.load_lora(folder, 0.6)
    assert pipe.loras == [{"name": name, "strength": {"high": 0.6, "low": 0.6}, "merged": False}]
    both = pipe(PROMPT, **RUN).frames
    pipe.unload_lora()
    want = merged_by_hand(ckpt, {"high": high_deltas, "low": deltas}, 0.6)(PROMPT, **RUN).frames
    assert (both - want).abs().max() <= 1e-5


def test_strength_between_calls_metadata_and_offload(ckpt, pipe):
    path, _ = write_lora(ckpt, "lightx2v", seed=9)
    base = pipe(PROMPT, **RUN).frames
    name = pipe.load_lora(path, 1.0)
    full = pipe(PROMPT, **RUN)
    pipe.set_lora_strength(name, 0.0)
    assert torch.equal(pipe(PROMPT, **RUN).frames, base)  # strength 0: exactly the base model, no reload
    pipe.set_lora_strength(name, 0.5, expert="low")
    pipe.set_lora_strength(name, 1.0, expert="high")
    record = json.loads(pipe(PROMPT, **RUN).metadata["loras"])
    assert record == [{"name": name, "strength": {"high": 1.0, "low": 0.5}, "merged": False}]
    pipe.set_lora_strength(name, 1.0)
    assert json.loads(full.metadata["loras"])[0]["strength"] == {"high": 1.0, "low": 1.0}
    pipe.unload_lora()
    assert "loras" not in pipe(PROMPT, **RUN).metadata
    for policy in ("model", "block"):  # the LoRA travels with its expert: same frames as resident
        other = WanPipeline.from_pretrained(ckpt / "official", device="cpu", offload=policy)
        other.load_lora(path, 1.0)
        assert torch.equal(other(PROMPT, **RUN).frames, full.frames)


def test_bad_loras_are_clear_errors(ckpt, pipe, tmp_path):
    path, _ = write_lora(ckpt, "wan")
    with pytest.raises(ValueError, match="strength must be a number"):
        pipe.load_lora(path, "strong")
    with pytest.raises(ValueError, match="expert must be one of"):
        pipe.load_lora(path, expert="middle")
    wide = tmp_path / "wide.safetensors"
    save_file(make_lora("wan", TINY_DITS[TASK].replace(dim=48, num_heads=4))[0], wide)
    with pytest.raises(LoraError, match="another model size"):
        pipe.load_lora(wide)
    assert pipe.loras == []  # nothing half-loaded
    with pytest.raises(ValueError, match="no LoRA named"):
        pipe.unload_lora("nope")


def test_peft_alpha_in_the_header_as_diffusers_reads_it(ckpt, pipe, tmp_path):
    """A diffusers-saved LoRA keeps PEFT's lora_alpha / alpha_pattern in the safetensors header, not in the keys."""
    from peft import LoraConfig, get_peft_model_state_dict

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    maker = diffusers_pipe(DiffusersWan, ckpt / "diffusers", TASKS[TASK].shift)
    config = LoraConfig(r=4, lora_alpha=8, alpha_pattern={"attn2.to_k": 2}, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"])  # fmt: skip
    maker.transformer.add_adapter(config)
    layers = get_peft_model_state_dict(maker.transformer)
    DiffusersWan.save_lora_weights(tmp_path, transformer_lora_layers=layers,
                                   transformer_lora_adapter_metadata=config.to_dict())  # fmt: skip
    path = tmp_path / "pytorch_lora_weights.safetensors"
    noise = pipe.noise((16, 2, 8, 8), seed=3)
    base = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    pipe.load_lora(path, expert="high")
    ours = pipe(PROMPT, **{**RUN, "seed": None}, latents=noise).frames
    scales = {n: d[0].scale for n, d in read_lora(path)[None].deltas.items()}
    pipe.unload_lora()
    assert scales["blocks.0.self_attn.q.weight"] == 2.0 and scales["blocks.1.cross_attn.k.weight"] == 0.5
    theirs = diffusers_frames(ckpt, path, ("high",), noise)
    assert (ours - theirs).abs().max() <= 1e-4 and (ours - base).abs().max() > 0.1
