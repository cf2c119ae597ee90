"""Single files as people download them load and generate: float safetensors equal the folder's frames, FP8 and
GGUF stay quantised in memory within a tolerance that shrinks with the bits, and bad files are one clear error."""

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, random_dit_state
from tests.tiny.single_files import SMALL_T2V, block_linear, write_fp8, write_gguf, write_safetensors
from wanflow.checkpoints.io import read_folder
from wanflow.checkpoints.layouts import files_layout
from wanflow.checkpoints.load_file import load_dit_file
from wanflow.models.dit import WanDiT
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.quantized import stored_layers

KW = dict(size=(64, 48), frames=5, steps=3, seed=4)


def dit_inputs(cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 6, generator=gen)
    return x, torch.tensor([700]), torch.randn(1, 5, cfg.text_dim, generator=gen)


def float_dit(cfg, state) -> WanDiT:
    with torch.device("meta"):
        model = WanDiT(cfg)
    model.load_state_dict(state, assign=True)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


def test_float_single_files_give_the_folder_frames(ckpt, tmp_path):
    """fp32 files with ComfyUI's prefix: bit-identical; bf16 / fp16 files: the folder rounded the same way."""
    base = WanPipeline.from_pretrained(ckpt)
    want = base("a red circle", **KW).frames
    files = {e: read_folder(ckpt / f"{e}_noise_model") for e in ("high", "low")}
    paths = {e: write_safetensors(s, tmp_path / f"{e}.safetensors", TINY_T2V, prefix="model.diffusion_model.")
             for e, s in files.items()}  # fmt: skip
    layout = files_layout(paths["high"], paths["low"], base=base_layout(ckpt))
    assert torch.equal(WanPipeline.from_pretrained(layout, task="t2v-A14B")("a red circle", **KW).frames, want)
    for dtype in (torch.bfloat16, torch.float16):
        paths = {e: write_safetensors(s, tmp_path / f"{e}-{dtype}.safetensors", TINY_T2V, dtype)
                 for e, s in files.items()}  # fmt: skip
        rounded = WanPipeline.from_pretrained(files_layout(paths["high"], paths["low"], base=base_layout(ckpt)))
        folder = rounded_folder(ckpt, tmp_path / f"folder-{dtype}", files, dtype)
        want = WanPipeline.from_pretrained(folder)("a red circle", **KW).frames
        assert torch.equal(rounded("a red circle", **KW).frames, want)


def rounded_folder(ckpt, root, experts, dtype):
    """The official checkpoint with its experts' weights rounded to ``dtype`` (and stored as float32)."""
    import shutil

    from tests.tiny.checkpoint import write_dit

    shutil.copytree(ckpt, root)
    for name, state in experts.items():
        shutil.rmtree(root / f"{name}_noise_model")
        write_dit(TINY_T2V, {k: v.to(dtype).float() for k, v in state.items()}, root / f"{name}_noise_model")
    return root


def base_layout(ckpt):
    from wanflow.checkpoints.layouts import detect_layout

    return detect_layout(ckpt)


@pytest.mark.parametrize(
    ("layout", "fp8", "bound"),
    [("legacy", torch.float8_e4m3fn, 0.04), ("new", torch.float8_e4m3fn, 0.04), ("plain", torch.float8_e4m3fn, 0.04),
     ("plain", torch.float8_e5m2, 0.08)],
)  # fmt: skip
def test_fp8_files_stay_fp8_within_the_rounding_of_their_format(tmp_path, layout, fp8, bound):
    state = random_dit_state(TINY_T2V, 1)
    model = load_dit_file(write_fp8(state, tmp_path / "dit.safetensors", TINY_T2V, layout, fp8))
    stored = stored_layers(model)
    assert len(stored) == sum(block_linear(k, v) for k, v in state.items()) and set(stored.values()) == {str(fp8)}
    for name in stored:  # per layer: e4m3 keeps 3 mantissa bits (2^-4 at most), e5m2 2 (2^-3)
        assert relative(model.get_submodule(name).weight, state[f"{name}.weight"]) < bound
    with torch.no_grad():
        got, want = model(*dit_inputs(TINY_T2V)), float_dit(TINY_T2V, state)(*dit_inputs(TINY_T2V))
    assert relative(got, want) < 2 * bound


def test_gguf_types_gguf_writes_shrink_their_error_with_the_bits(tmp_path):
    state = random_dit_state(SMALL_T2V, 2, scale=0.05)
    want = float_dit(SMALL_T2V, state)
    errors = {}
    for qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        write_gguf(state, tmp_path / f"{qtype}.gguf", SMALL_T2V, qtype)
        model = load_dit_file(tmp_path / f"{qtype}.gguf")
        assert set(stored_layers(model).values()) == {qtype}
        layer = max(relative(model.get_submodule(n).weight, state[f"{n}.weight"]) for n in stored_layers(model))
        with torch.no_grad():
            errors[qtype] = (layer, relative(model(*dit_inputs(SMALL_T2V)), want(*dit_inputs(SMALL_T2V))))
    # Worst layer: steps of max|w| / 8, / 16, / 127 over blocks of 32 (Q4_1 / Q5_1 split the range: half the step).
    assert errors["Q8_0"][0] < 0.01 < errors["Q5_1"][0] < errors["Q5_0"][0] < 0.07 < errors["Q4_1"][0]
    assert errors["Q4_1"][0] < errors["Q4_0"][0] < 0.15
    assert errors["Q8_0"][1] < errors["Q5_0"][1] < errors["Q4_0"][1] < 0.2


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_gguf_k_types_equal_the_weights_they_decode_to(tmp_path, qtype):
    state = random_dit_state(SMALL_T2V, 3, scale=0.05)
    decoded = write_gguf(state, tmp_path / "dit.gguf", SMALL_T2V, qtype)
    model = load_dit_file(tmp_path / "dit.gguf")
    assert set(stored_layers(model).values()) == {qtype}
    with torch.no_grad():
        got, want = model(*dit_inputs(SMALL_T2V)), float_dit(SMALL_T2V, decoded)(*dit_inputs(SMALL_T2V))
    assert torch.equal(got, want)
    quantized = sum(p.numel() * p.element_size() for p in model.parameters())
    assert quantized < 0.45 * sum(v.numel() * 4 for v in state.values())  # stays packed: < 9 bits a weight, + floats


def comfy_folder(ckpt, root, qtype="Q8_0"):
    """ComfyUI's models/ tree: two GGUF experts (small DiTs, blocks of 32), the VAE as safetensors, umT5 under
    transformers' names in the older FP8 layout, and its tokenizer beside it. Returns the float weights the experts
    decode to."""
    from tests.tiny.t5 import TINY_T5  # noqa: F401  (the tiny checkpoint's encoder)
    from wanflow.checkpoints.io import read_weights
    from wanflow.checkpoints.maps.t5 import T5_KEYMAP

    (root / "diffusion_models").mkdir(parents=True)
    decoded = {}
    for i, expert in enumerate(("high", "low")):
        state = random_dit_state(SMALL_T2V, 10 + i, scale=0.05)
        path = root / "diffusion_models" / f"wan2.2_t2v_{expert}_noise_14B_{qtype}.gguf"
        decoded[expert] = write_gguf(state, path, SMALL_T2V, qtype)
    (root / "vae").mkdir()
    write_safetensors(read_weights(ckpt / "Wan2.1_VAE.pth"), root / "vae" / "wan_2.1_vae.safetensors")
    (root / "text_encoders").mkdir()
    t5 = T5_KEYMAP.forward(read_weights(ckpt / "models_t5_umt5-xxl-enc-bf16.pth"))
    write_fp8_t5(t5, root / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    import shutil

    shutil.copytree(ckpt / "google" / "umt5-xxl", root / "text_encoders" / "tokenizer")
    return decoded


def write_fp8_t5(state, path):
    from safetensors.torch import save_file

    from tests.tiny.single_files import fp8_values

    out = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and ".layer." in key:
            out[key], scale = fp8_values(value, torch.float8_e4m3fn, True)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, path)


def test_a_folder_of_comfyui_files_is_detected_and_generates(ckpt, tmp_path):
    from wanflow.checkpoints.layouts import detect_layout
    from wanflow.checkpoints.load import load_components

    decoded = comfy_folder(ckpt, tmp_path / "models")
    layout = detect_layout(tmp_path / "models")
    assert layout.kind == "files" and set(layout.experts) == {"high", "low"} and "high" in layout.experts["high"].name
    pipe = WanPipeline.from_pretrained(layout, task="t2v-A14B")
    assert all(set(stored_layers(m).values()) == {"Q8_0"} for m in pipe.experts.values())
    assert set(stored_layers(pipe.text_encoder.model).values()) == {"torch.float8_e4m3fn"}
    video = pipe("a red circle", **KW)
    # The same components in float32: the experts' decoded weights, the VAE, and the dequantised umT5.
    parts = load_components(layout)
    for name in ("high", "low"):
        parts.experts[name] = float_dit(SMALL_T2V, decoded[name])
    want = WanPipeline(parts, pipe.task)("a red circle", **KW)
    assert (video.frames - want.frames).abs().max() < 1e-4


def test_single_files_convert_to_the_official_layout(ckpt, tmp_path):
    from wanflow.checkpoints.convert import convert_checkpoint
    from wanflow.checkpoints.layouts import detect_layout

    comfy_folder(ckpt, tmp_path / "models")
    files = WanPipeline.from_pretrained(tmp_path / "models", task="t2v-A14B")
    out = convert_checkpoint(tmp_path / "models", tmp_path / "official", dtype=torch.float32)
    assert out.kind == "official" and detect_layout(tmp_path / "official").is_moe
    converted = WanPipeline.from_pretrained(tmp_path / "official")
    assert stored_layers(converted.experts["high"]) == {}  # dequantised on the way
    a, b = files("a red circle", **KW).frames, converted("a red circle", **KW).frames
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("policy", ["model", "block"])
def test_memory_policies_move_the_stored_weights(ckpt, tmp_path, policy):
    """Quantised experts under model offload and block streaming give the resident frames, and stay quantised."""
    comfy_folder(ckpt, tmp_path / "models", "Q4_0")
    resident = WanPipeline.from_pretrained(tmp_path / "models", task="t2v-A14B", offload="resident")
    other = WanPipeline.from_pretrained(tmp_path / "models", task="t2v-A14B", offload=policy)
    assert torch.equal(resident("a red circle", **KW).frames, other("a red circle", **KW).frames)
    assert all(set(stored_layers(m).values()) == {"Q4_0"} for m in other.experts.values())


def test_from_single_files_in_python(ckpt, tmp_path):
    comfy_folder(ckpt, tmp_path / "models")
    m = tmp_path / "models"
    pipe = WanPipeline.from_single_files(
        dit=next((m / "diffusion_models").glob("*high*")),
        dit_low=next((m / "diffusion_models").glob("*low*")),
        vae=m / "vae" / "wan_2.1_vae.safetensors",
        t5=m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        tokenizer=m / "text_encoders" / "tokenizer",
        task="t2v-A14B",
    )
    folder = WanPipeline.from_pretrained(m, task="t2v-A14B")
    assert torch.equal(pipe("a red circle", **KW).frames, folder("a red circle", **KW).frames)


@torch.no_grad()
def test_a_lora_applies_beside_quantised_weights(tmp_path):
    """Unmerged on a GGUF expert (its blocks stay stored): the same as on the float weights the file decodes to."""
    from tests.tiny.lora import make_lora
    from wanflow.checkpoints.lora import parse_lora
    from wanflow.runtime.lora import apply_lora

    state = random_dit_state(SMALL_T2V, 4, scale=0.05)
    decoded = write_gguf(state, tmp_path / "dit.gguf", SMALL_T2V, "Q4_K")
    quantised, plain = load_dit_file(tmp_path / "dit.gguf"), float_dit(SMALL_T2V, decoded)
    lora = parse_lora(make_lora("wan", SMALL_T2V, 6)[0], "wan")
    for model in (quantised, plain):
        apply_lora(model, lora, "style", 0.8)
    assert set(stored_layers(quantised).values()) == {"Q4_K"}
    got, want = quantised(*dit_inputs(SMALL_T2V)), plain(*dit_inputs(SMALL_T2V))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Q4_K layer cannot take new float weights"):
        apply_lora(load_dit_file(tmp_path / "dit.gguf"), lora, "style", 0.8, merge=True)


@torch.no_grad()
def test_a_lora_beside_gguf_weights_stays_when_a_merge_is_refused(tmp_path):
    """diffusers' fuse_lora on a GGUF expert: refused before the LoRA is taken off, so it keeps running beside."""
    from tests.tiny.lora import make_lora
    from wanflow.checkpoints.lora import parse_lora
    from wanflow.runtime.lora import apply_lora, loaded_loras, reapply_lora

    write_gguf(random_dit_state(SMALL_T2V, 4, scale=0.05), tmp_path / "dit.gguf", SMALL_T2V, "Q4_K")
    model = load_dit_file(tmp_path / "dit.gguf")
    lora = parse_lora(make_lora("wan", SMALL_T2V, 6)[0], "wan")
    apply_lora(model, lora, "style", 0.8)
    before = model(*dit_inputs(SMALL_T2V))
    with pytest.raises(ValueError, match="Q4_K layer cannot take new float weights"):
        reapply_lora(model, "style", lora, 0.8, merge=True)
    assert [(a.name, a.merged, a.strength) for a in loaded_loras(model)] == [("style", False, 0.8)]
    assert torch.equal(model(*dit_inputs(SMALL_T2V)), before)
