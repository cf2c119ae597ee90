"""RIFLEx's tables (``models.rope``): bit for bit KJNodes' Apply RifleXRoPE WanVideo node through ComfyUI's Wan rope
(``kj_riflex.json``, their code run as an oracle: see its "source"); the closed form of the lowered frequency; the
other frequencies untouched; the refusals."""

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wanflow.models.rope import axis_pairs, check_riflex, rope_angles, rope_tables

GOLDEN = json.loads((Path(__file__).parent / "kj_riflex.json").read_text())


def table(text: str, head_dim: int) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="<f4").copy()).view(-1, head_dim // 2)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"d{c['head_dim']}-k{c['k']}-f{c['grid'][0]}")
def test_tables_are_kjnodes_riflex_bit_for_bit(case):
    d, grid = case["head_dim"], tuple(case["grid"])
    assert case["latent_frames"] == grid[0]  # (the node's latent: the video's)
    cos, sin = rope_tables(d, grid, riflex=case["k"])
    assert torch.equal(cos, table(case["cos"], d)) and torch.equal(sin, table(case["sin"], d))
    if "plain_cos" in case:  # ComfyUI's own rope, for the same grid: wanflow's without RIFLEx
        cos, sin = rope_tables(d, grid)
        assert torch.equal(cos, table(case["plain_cos"], d)) and torch.equal(sin, table(case["plain_sin"], d))


@pytest.mark.parametrize(("k", "frames"), [(6, 31), (1, 4), (22, 21)])
def test_the_lowered_frequency_in_closed_form(k, frames):
    """The k-th frame frequency turns 0.9 of a circle over the video's frames; nothing else moves."""
    head_dim, grid = 128, (frames, 2, 3)
    plain, lowered = rope_angles(head_dim, grid), rope_angles(head_dim, grid, riflex=k)
    per_frame = lowered.view(frames, 6, 64)[:, 0, k - 1]
    want = torch.arange(frames, dtype=torch.float64) * 0.9 * 2 * math.pi / frames
    torch.testing.assert_close(per_frame, want, rtol=1e-15, atol=1e-15)
    assert per_frame[-1] < 0.9 * 2 * math.pi  # (no frame goes round the circle)
    others = torch.ones(64, dtype=torch.bool)
    others[k - 1] = False
    assert torch.equal(lowered[:, others], plain[:, others])
    assert not torch.equal(lowered[:, k - 1], plain[:, k - 1])


def test_the_frequencies_riflex_names():
    assert axis_pairs(128)[0] == 22 and axis_pairs(64)[0] == 12
    check_riflex(0, 128)
    check_riflex(22, 128)
    for k in (23, -1, True, 2.0, "6"):
        with pytest.raises(ValueError, match=r"riflex is the frame frequency to lower: 1\.\.22 at head dim 128"):
            check_riflex(k, 128)
    with pytest.raises(ValueError, match=r"1\.\.12 at head dim 64"):
        rope_tables(64, (3, 2, 2), riflex=13)
