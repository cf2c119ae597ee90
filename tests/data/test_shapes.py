import itertools

import numpy as np
import pytest

from wanflow.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    Clip,
    all_combos,
    combo_clips,
    first_frame,
    held_out_clips,
    render,
    render_batch,
    sample_clips,
)


def clip(**overrides):
    spec = dict(
        shape="square", colour="red", direction="right", background="black", size=4.0, speed=1.0, start=(8.0, 10.0)
    )
    return Clip(**{**spec, **overrides})


def test_prompts_read_as_plain_english():
    assert clip(colour="green", direction="up").prompt == "a green square moving up on a black background"
    still = clip(shape="circle", direction="still", background="navy", speed=0.0)
    assert still.prompt == "a red circle staying still on a navy background"
    assert still.short_prompt == "a red circle staying still"
    assert clip().combo == ("red", "square", "right")


def test_unknown_names_and_bad_geometry_are_rejected():
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        clip(colour="purple")
    with pytest.raises(ValueError, match="size must be > 0"):
        clip(size=0.0)
    with pytest.raises(ValueError, match="leaves the 16x16 frame"):
        render(clip(), 9, 16, 16)  # x: 8 + 8 frames * 1 px + 4 > 16
    with pytest.raises(ValueError, match="at least 16x16"):
        sample_clips(0, 1, 8, 8, 17)
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_clips(0, 1, 32, 32, 1)
    with pytest.raises(ValueError, match="unknown shape"):
        sample_clips(0, 1, 32, 32, 5, exclude={("red", "star", "up")})


def test_square_pixels_are_exact_and_edges_are_blended():
    # Square of half-side 4 centred at (8, 10): columns 4..11, rows 6..13 fully covered.
    frame = first_frame(clip(start=(8.0, 10.0)), 20, 20)
    inside = frame[6:14, 4:12]
    assert (inside == COLOURS["red"]).all()
    assert (frame[:, :4] == 0).all() and (frame[:, 12:] == 0).all() and (frame[:6] == 0).all()
    half = first_frame(clip(start=(8.5, 10.0)), 20, 20)  # edges now cut pixels 4 and 12 in half
    assert half[10, 4].tolist() == [115, 20, 20] and half[10, 12].tolist() == [115, 20, 20]


def test_circle_and_triangle_areas_match_geometry():
    for shape, area in (("circle", np.pi * 10**2), ("triangle", 2 * 10**2), ("square", 4 * 10**2)):
        frame = first_frame(clip(shape=shape, colour="white", size=10.0, start=(16.3, 15.7)), 32, 32)
        coverage = frame[..., 0].astype(np.float64).sum() / COLOURS["white"][0]
        assert coverage == pytest.approx(area, rel=0.01), shape


def test_triangle_points_up():
    frame = first_frame(clip(shape="triangle", colour="white", size=10.0, start=(16.0, 16.0)), 32, 32)
    widths = (frame[..., 0] > 127).sum(axis=1)
    assert widths[7] <= 2 and widths[24] >= 18  # narrow near the apex (y=6), wide near the base (y=26)


def test_motion_follows_direction_and_speed():
    video = render(clip(direction="down", speed=1.5, start=(8.0, 8.0)), 5, 32, 32)
    rows = [np.nonzero((frame[..., 0] > 127).any(axis=1))[0] for frame in video]
    tops = [r[0] for r in rows]
    assert tops == [4, 6, 7, 9, 10]  # the top edge is at 4 + 1.5 t; a pixel counts when over half covered
    assert np.array_equal(video[0], first_frame(clip(direction="down", speed=1.5, start=(8.0, 8.0)), 32, 32))


@pytest.mark.parametrize("size", [32, 64, 96, (48, 80)])
def test_sampled_objects_stay_inside_and_move_far_enough(size):
    height, width = (size, size) if isinstance(size, int) else size
    frames = 17
    side = min(height, width)
    for c in sample_clips(1, 200, height, width, frames):
        centres = c.centres(frames)
        assert (centres - c.size >= 1.0 - 1e-9).all()
        assert (centres[:, 0] + c.size <= width - 1.0 + 1e-9).all()
        assert (centres[:, 1] + c.size <= height - 1.0 + 1e-9).all()
        assert 0.12 * side <= c.size <= 0.20 * side
        travel = np.abs(centres[-1] - centres[0]).max()
        if c.direction == "still":
            assert c.speed == 0.0 and travel == 0.0
        else:
            assert 0.30 * side - 1e-9 <= travel <= 0.45 * side + 1e-9


def test_rendered_border_is_background():
    height, width, frames = 32, 48, 9
    clips = sample_clips(3, 50, height, width, frames)
    videos = render_batch(clips, frames, height, width)
    assert videos.shape == (50, frames, height, width, 3) and videos.dtype == np.uint8
    for c, video in zip(clips, videos, strict=True):
        border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert (border == BACKGROUNDS[c.background]).all()


def test_sampling_is_deterministic_and_seed_dependent():
    a = sample_clips(7, 20, 64, 64, 17)
    assert a == sample_clips(7, 20, 64, 64, 17)
    assert a != sample_clips(8, 20, 64, 64, 17)
    assert np.array_equal(render_batch(a[:3], 17, 64, 64), render_batch(a[:3], 17, 64, 64))


def test_held_out_combos_never_appear_in_training():
    train = {c.combo for c in sample_clips(0, 3000, 32, 32, 9)}
    assert not train & HELD_OUT
    assert train == set(all_combos()) - HELD_OUT  # 3000 draws over 96 combos: all appear
    assert {c.combo for c in sample_clips(0, 3000, 32, 32, 9, exclude=set())} == set(all_combos())


def test_held_out_parts_are_all_seen_in_training():
    train = set(all_combos()) - HELD_OUT
    assert 8 <= len(HELD_OUT) <= 10
    for combo in HELD_OUT:
        for i, j in itertools.combinations(range(3), 2):  # every pair of the combo shows up in training
            assert any(t[i] == combo[i] and t[j] == combo[j] for t in train), (combo, i, j)
    assert {c for c, _, _ in HELD_OUT} == set(COLOURS)  # and every colour is tested on a held-out combo
    assert {s for _, s, _ in HELD_OUT} == set(SHAPES)
    assert {d for _, _, d in HELD_OUT} == set(DIRECTIONS)


def test_held_out_clips_cover_each_combo_n_times():
    clips = held_out_clips(0, 3, 32, 32, 9)
    assert [c.combo for c in clips] == [combo for combo in sorted(HELD_OUT) for _ in range(3)]
    assert clips == held_out_clips(0, 3, 32, 32, 9)
    assert [c.combo for c in combo_clips(0, [("white", "circle", "left")], 2, 32, 32, 9)] == [
        ("white", "circle", "left")
    ] * 2


def _hue(rgb):
    r, g, b = (v / 255 for v in rgb)
    high, low = max(r, g, b), min(r, g, b)
    if high == r:
        return 60 * ((g - b) / (high - low) % 6)
    if high == g:
        return 60 * ((b - r) / (high - low) + 2)
    return 60 * ((r - g) / (high - low) + 4)


def test_colours_are_distinguishable_and_contrast_with_every_background():
    chromatic = {name: _hue(rgb) for name, rgb in COLOURS.items() if name != "white"}
    for a, b in itertools.combinations(chromatic, 2):
        d = abs(chromatic[a] - chromatic[b]) % 360
        assert min(d, 360 - d) >= 50, (a, b)
    white = COLOURS["white"]
    assert max(white) - min(white) == 0 and min(white) >= 200
    for name, rgb in COLOURS.items():
        assert max(rgb) >= 200, name  # bright
        for background, bg in BACKGROUNDS.items():
            assert np.linalg.norm(np.subtract(rgb, bg)) >= 150, (name, background)
