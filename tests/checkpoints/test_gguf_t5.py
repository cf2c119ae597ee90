"""umT5 as a GGUF file (city96's ``umt5-xxl-encoder-*.gguf``: llama.cpp's tensor names, architecture "t5encoder"):
recognised as a text encoder, loaded with its linears kept quantised, and encoding as the weights it decodes to."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.single_files import close_gguf
from wanflow.checkpoints.io import read_weights
from wanflow.checkpoints.load_file import load_t5_file
from wanflow.checkpoints.maps.t5 import T5_KEYMAP
from wanflow.checkpoints.single_file import peek_kind, read_single_file
from wanflow.runtime.quantized import QuantTensor

PROMPTS = ["a red circle moving right", "a blue square"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B")


def llama_name(hf_key: str, names) -> str:
    """transformers' key -> llama.cpp's, by the ``gguf`` package's own map (independent of wanflow's reverse map)."""
    base, _, suffix = hf_key.rpartition(".")
    return f"{names.get_name(base)}.{suffix}"


def write_t5_gguf(ckpt, path, qtype: str | None) -> dict[str, torch.Tensor]:
    """The tiny checkpoint's umT5 as a GGUF file, its 2-D weights (linears and the token embedding) in ``qtype``
    (None: all F32); returns the transformers-named float weights the file decodes to."""
    hf = T5_KEYMAP.forward(read_weights(ckpt / "models_t5_umt5-xxl-enc-bf16.pth"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, 2)
    writer = gguf.GGUFWriter(path, arch="t5encoder")
    decoded = {}
    for key, value in hf.items():
        x = value.float().numpy()
        kind = GGMLQuantizationType[qtype] if qtype and x.ndim == 2 and x.shape[1] % 32 == 0 else None
        stored = quants.quantize(x, kind) if kind is not None else x
        writer.add_tensor(llama_name(key, names), stored, raw_dtype=kind)
        back = quants.dequantize(stored, kind) if kind is not None else stored
        decoded[key] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32)).reshape(value.shape)
    close_gguf(writer)
    return decoded


def encode(path, ckpt):
    with torch.no_grad():
        return load_t5_file(path, ckpt / "google" / "umt5-xxl").encode(PROMPTS)


def test_an_f32_gguf_encoder_encodes_as_the_official_file(ckpt, tmp_path):
    path = tmp_path / "umt5-xxl-encoder-F32.gguf"
    write_t5_gguf(ckpt, path, None)
    assert peek_kind(path) == "t5" and read_single_file(path).kind == "t5"
    want = encode(ckpt / "models_t5_umt5-xxl-enc-bf16.pth", ckpt)
    for got, ref in zip(encode(path, ckpt), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_a_q8_gguf_encoder_keeps_its_linears_quantised_and_encodes_as_its_decoded_weights(ckpt, tmp_path):
    path = tmp_path / "umt5-xxl-encoder-Q8_0.gguf"
    decoded = write_t5_gguf(ckpt, path, "Q8_0")
    file = read_single_file(path)
    quantised = sorted(k for k, v in file.state.items() if isinstance(v, QuantTensor))
    assert "shared.weight" in quantised and "encoder.block.1.layer.1.DenseReluDense.wi_0.weight" in quantised
    # the float model of the decoded weights, written as an F32 file of transformers' names
    from safetensors.torch import save_file

    save_file(decoded, tmp_path / "decoded.safetensors")
    want = encode(tmp_path / "decoded.safetensors", ckpt)
    original = encode(ckpt / "models_t5_umt5-xxl-enc-bf16.pth", ckpt)
    for got, ref, orig in zip(encode(path, ckpt), want, original, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert 0 < (got - orig.float()).norm() / orig.float().norm() < 0.05  # Q8_0: near the original, not equal
