"""Spatially tiled VAE decode: the halo is the decoder tail's receptive field, and tiles give the plain decode."""

import pytest
import torch

from tests.tiny.vae import TINY_VAE21, TINY_VAE22, random_vae
from wanflow.runtime.vae_tiling import (
    decode_tile,
    decode_tiled,
    decode_trunk,
    frame_ticks,
    pixels,
    plan_tiles,
    tail_halo,
)

TINY = {"2.1": TINY_VAE21, "2.2": TINY_VAE22}


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def vae(request):
    return random_vae(TINY[request.param], seed=3)


def latents(vae, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, vae.cfg.z_dim, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def plain(vae):
    """Latents whose column windows are clipped by the halo (48 > 16 + 2 * 13), rows by the frame; their decode."""
    z = latents(vae, 2, 6, 48)
    with torch.no_grad():
        return z, vae.decode(z)


def test_halo_is_the_receptive_field_of_the_tail(vae):
    # The gradient of one latent pixel's output block w.r.t. the tail input is non-zero exactly where that block
    # reads from: columns and rows c - 13 ... c + 13 (zero beyond, by construction of the convolutions).
    assert tail_halo(vae.decoder) == 13
    c, size = 15, 31
    x = torch.randn(1, vae.decoder.conv1.out_channels, 1, size, size, requires_grad=True)
    up = vae.cfg.stride[1] // vae.cfg.patch_size
    y = vae.decoder.tail(x)
    y[..., c * up : (c + 1) * up, c * up : (c + 1) * up].sum().backward()
    rows = (x.grad.abs().sum(dim=(0, 1, 2, 4)) > 0).nonzero().flatten().tolist()
    cols = (x.grad.abs().sum(dim=(0, 1, 2, 3)) > 0).nonzero().flatten().tolist()
    assert rows == cols == list(range(c - 13, c + 14))


@pytest.mark.parametrize("tile", [(3, 16), (4, 20), 64])  # 16 divides the width, 4 and 20 do not; 64 = one tile
def test_tiled_decode_equals_plain(vae, plain, tile):
    z, plain = plain
    with torch.no_grad():
        tiled = decode_tiled(vae, z, tile)
    assert tiled.shape == plain.shape == (1, 3, 5, 6 * vae.cfg.stride[1], 48 * vae.cfg.stride[1])
    assert (tiled - plain).abs().max().item() <= 1e-5


def test_a_smaller_halo_is_not_exact(vae):
    # In float64 rounding is ~1e-16, so the far edge of the receptive field (its influence here is ~1e-12) shows:
    # the tile reading columns [0, 29) is exact, the one reading [0, 28) is not.
    z = latents(vae, 2, 6, 48).double()
    vae64 = random_vae(vae.cfg, seed=3).double()
    with torch.no_grad():
        plain = vae64.decode(z)
        trunk = decode_trunk(vae64, z)
        diffs = []
        for halo in (13, 12):
            tile = plan_tiles(6, 48, (6, 16), halo)[0]
            assert tile.window_cols == slice(0, 16 + halo)
            out = torch.empty(1, 3, 5, *(n * vae.cfg.stride[1] for n in (6, 16)), dtype=torch.float64)
            decode_tile(vae64, trunk, tile, out)
            rows, cols = pixels(vae64, tile)
            diffs.append((out - plain[..., rows, cols]).abs().max().item())
    assert diffs[0] <= 1e-14
    assert diffs[1] > 1e-13


def test_plan_tiles_covers_the_frame_once():
    tiles = plan_tiles(5, 7, (2, 3), halo=1)
    assert [(t.rows.start, t.rows.stop) for t in tiles[::3]] == [(0, 2), (2, 4), (4, 5)]
    assert [(t.cols.start, t.cols.stop) for t in tiles[:3]] == [(0, 3), (3, 6), (6, 7)]
    assert [(t.window_cols.start, t.window_cols.stop) for t in tiles[:3]] == [(0, 4), (2, 7), (5, 7)]
    covered = torch.zeros(5, 7, dtype=torch.int64)
    for t in tiles:
        covered[t.rows, t.cols] += 1
    assert torch.equal(covered, torch.ones(5, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="tile sizes must be >= 1"):
        plan_tiles(5, 7, 0, halo=1)


def test_frame_ticks_spread_the_frames_over_the_work():
    seen, ticks = [], []
    tick = frame_ticks(lambda i: seen.append((i, len(ticks))), frames=3, units=10)
    for _ in range(10):
        ticks.append(1)
        tick()
    assert seen == [(0, 4), (1, 7), (2, 10)]  # frame i is reported once (i + 1) / 3 of the work is done
    idle = []
    frame_ticks(idle.append, frames=2, units=0)  # a rank without tiles: the frames count as done
    assert idle == [0, 1]


def test_tiled_decode_reports_every_latent_frame_once():
    vae = random_vae(TINY_VAE21, seed=3)
    seen = []
    with torch.no_grad():
        decode_tiled(vae, latents(vae, 3, 4, 4), 2, on_frame=seen.append)
    assert seen == [0, 1, 2]
