"""``wanflow generate`` from single files (``--dit``, ``--dit_low``, ``--vae``, ``--t5``, ``--tokenizer``), ``wanflow
info FILE``, and bad files as one line with exit code 2."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from tests.checkpoints.test_single_file import comfy_folder
from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_I2V, random_dit_state
from tests.tiny.single_files import SMALL_T2V, write_gguf, write_safetensors
from wanflow.cli import main

FAST = ["--size", "64*48", "--frame_num", "5", "--sample_steps", "2", "--base_seed", "3"]


def comfy_models(root):
    """``root/models``: a tiny T2V-A14B's files in ComfyUI's folders under ComfyUI's names (GGUF experts)."""
    ckpt = write_official_checkpoint(root / "ckpt", "t2v-A14B")
    comfy_folder(ckpt, root / "models")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return comfy_models(tmp_path_factory.mktemp("files"))


def files(models) -> list[str]:
    m = models / "models"
    return [
        "--dit", str(next((m / "diffusion_models").glob("*high*"))),
        "--dit_low", str(next((m / "diffusion_models").glob("*low*"))),
        "--vae", str(m / "vae" / "wan_2.1_vae.safetensors"),
        "--t5", str(m / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
        "--tokenizer", str(m / "text_encoders" / "tokenizer"),
    ]  # fmt: skip


def run(capsys, *argv) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_generate_from_files_one_by_one_and_from_their_folder(models, tmp_path, capsys):
    out = tmp_path / "a.gif"
    assert main(["generate", "a red circle", *files(models), *FAST, "--save_file", str(out)]) == 0
    folder = tmp_path / "b.gif"
    args = ["generate", "a red circle", "--ckpt_dir", str(models / "models"), *FAST, "--save_file", str(folder)]
    assert main(args) == 0
    assert out.read_bytes() == folder.read_bytes()  # the same components, the same video


def test_info_names_component_format_and_types(models, capsys):
    path = next((models / "models" / "diffusion_models").glob("*high*"))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"{path}: dit, gguf," in text and " Q8_0" in text and " float32" in text
    assert "DiT for t2v-A14B: dim 256, 2 layers, 2 heads, in/out channels 16/16" in text
    capability = torch.backends.cpu.get_cpu_capability()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    bf16 = "oneDNN bfloat16" if native else "no oneDNN bfloat16: float32 is faster"
    assert f"devices: cpu ({capability}, {bf16})" in text


def bad_files(root):
    """One bad file per case, and the words its error must hold."""
    state = random_dit_state(SMALL_T2V, 0, scale=0.05)
    write_gguf(state, root / "ok.gguf", SMALL_T2V, "Q8_0")
    data = (root / "ok.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    writer = gguf.GGUFWriter(root / "iq4.gguf", arch="wan")
    for name, value in state.items():
        raw = np.zeros((value.shape[0], value.shape[1] // 32 * 18), np.uint8) if value.ndim == 2 else None
        quantized = raw is not None and name.startswith("blocks.")
        kind = GGMLQuantizationType.IQ4_NL if quantized else None
        writer.add_tensor(name, raw if quantized else value.numpy(), raw_dtype=kind)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    wan21 = {**random_dit_state(TINY_I2V, 0), "img_emb.proj.1.weight": torch.zeros(24, 24)}
    write_safetensors(wan21, root / "wan21_i2v.safetensors", TINY_I2V)
    write_safetensors(random_dit_state(TINY_I2V, 0), root / "i2v.safetensors", TINY_I2V)
    return {
        "truncated.gguf": "truncated or not a GGUF file",
        "iq4.gguf": "stored as IQ4_NL, a type wanflow does not read",
        "wan21_i2v.safetensors": "is a Wan 2.1 I2V / FLF2V DiT",
        "i2v.safetensors": "holds a i2v-A14B DiT (i2v), but --task is t2v-A14B",
    }


def test_bad_files_are_one_line_and_exit_2(models, tmp_path, capsys):
    cases = bad_files(tmp_path)
    others = files(models)[4:]  # --vae, --t5, --tokenizer
    for name, words in {**cases, "vae-as-dit": "holds a VAE, not a DiT (diffusion model)"}.items():
        dit = files(models)[5] if name == "vae-as-dit" else str(tmp_path / name)
        code, lines = run(capsys, "generate", "x", "--dit", dit, *others, *FAST, "--save_file", str(tmp_path / "o.mp4"))
        errors = [line for line in lines if "error" in line]
        assert code == 2 and len(errors) == 1 and words in errors[0], (name, lines)
    assert not (tmp_path / "o.mp4").exists()
