"""wanflow's torch dequantisers against the ``gguf`` package's numpy ones, on random blocks of every type (the K
types cannot be written by ``gguf``, so their blocks are random bytes with sane float16 scales), and the error of
the types ``gguf`` can write, which shrinks with the bits."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from wanflow.runtime import ggml

# Byte offsets of each type's float16 scale fields (d, dmin, m), overwritten with values in [-1, 1) so that random
# blocks decode to finite numbers (random bytes there would often be inf or nan).
SCALE_BYTES = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}  # fmt: skip


def random_blocks(qtype: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, ggml.FORMATS[qtype].size), dtype=np.uint8)
    for at in SCALE_BYTES[qtype]:
        blocks[:, at : at + 2] = rng.uniform(-1, 1, (n, 1)).astype(np.float16).view(np.uint8)
    return blocks


@pytest.mark.parametrize("qtype", list(SCALE_BYTES))
def test_every_block_type_matches_the_gguf_package(qtype):
    blocks = random_blocks(qtype, 37)
    want = quants.dequantize(blocks, GGMLQuantizationType[qtype]).reshape(37, -1)
    got = ggml.FORMATS[qtype].dequantize(torch.from_numpy(blocks))
    assert got.shape == (37, ggml.FORMATS[qtype].block)
    assert torch.equal(got, torch.from_numpy(want.astype(np.float32)))


@pytest.mark.parametrize("qtype", ["F16", "BF16", "F32"])
def test_float_types(qtype):
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    stored = quants.quantize(x, GGMLQuantizationType[qtype]) if qtype != "F32" else x
    raw = torch.from_numpy(np.ascontiguousarray(stored).view(np.uint8))
    got = ggml.dequantize(raw, qtype, (3, 64), torch.float32)
    assert torch.equal(got, torch.from_numpy(quants.dequantize(stored, GGMLQuantizationType[qtype])))


def test_error_shrinks_with_the_bits():
    x = np.random.default_rng(2).standard_normal((16, 256)).astype(np.float32)
    errors = {}
    for qtype in ("Q4_0", "Q5_0", "Q8_0"):
        raw = torch.from_numpy(quants.quantize(x, GGMLQuantizationType[qtype]))
        back = ggml.dequantize(raw, qtype, x.shape, torch.float32)
        errors[qtype] = float((back - torch.from_numpy(x)).norm() / np.linalg.norm(x))
    # Rounding to steps of max|x| / 127, / 16, / 8 over N(0, 1) blocks of 32: relative errors near 0.006, 0.045, 0.09.
    assert errors["Q8_0"] < 0.01 < errors["Q5_0"] < 0.07 < errors["Q4_0"] < 0.15
    assert ggml.bits_per_weight("Q8_0") == 8.5 and ggml.bits_per_weight("Q4_K") == 4.5


def test_rows_must_hold_whole_blocks():
    assert ggml.stored_bytes("Q4_K", (8, 512)) == 8 * 2 * 144
    with pytest.raises(ValueError, match="whole blocks of 256"):
        ggml.stored_bytes("Q4_K", (8, 100))
