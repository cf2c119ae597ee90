import math

import numpy as np
import pytest

from wanflow.data.shapes import BACKGROUNDS, Clip, all_combos, combo_clips, render, render_batch
from wanflow.evaluation import Detection, detect, format_scores, hue_distance, score

FRAMES = 9  # travel is a fraction of the frame whatever the frame count; fewer frames keep the tests fast


def every_combo(size: int, seed: int = 0) -> tuple[list[Clip], np.ndarray]:
    clips = combo_clips(seed, all_combos(), 1, size, size, FRAMES)
    return clips, render_batch(clips, FRAMES, size, size)


def accuracy(videos, clips) -> dict:
    return score([detect(v) for v in videos], clips)


def misses(videos, clips) -> list:
    """(wanted, got) for every clip whose colour, shape or direction was missed."""
    named = [(c.combo, (d.colour, d.shape, d.direction)) for c, d in zip(clips, map(detect, videos), strict=True)]
    return [(want, got) for want, got in named if want != got]


def noisy(video: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, video.shape)
    return np.clip(video + noise, 0, 255).astype(np.uint8)


def box_blur(video: np.ndarray) -> np.ndarray:
    """3x3 mean, edges repeated."""
    padded = np.pad(video.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = video.shape[1:3]
    total = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    return np.rint(total / 9).astype(np.uint8)


def halve(video: np.ndarray) -> np.ndarray:
    """2x2 mean: 64x64 -> 32x32."""
    f, h, w, c = video.shape
    return np.rint(video.reshape(f, h // 2, 2, w // 2, 2, c).astype(np.float32).mean(axis=(2, 4))).astype(np.uint8)


def rotate_hue(video: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every colour about the grey axis (a global colour cast, as a generator might produce)."""
    t = math.radians(degrees)
    c, k, q = math.cos(t), (1 - math.cos(t)) / 3, math.sin(t) / math.sqrt(3)
    matrix = np.array([[c + k, k - q, k + q], [k + q, c + k, k - q], [k - q, k + q, c + k]])
    return np.clip(video.astype(np.float32) @ matrix.T, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [64, 32])
def test_every_combo_is_named_on_clean_renders(size):
    clips, videos = every_combo(size)
    assert misses(videos, clips) == []


@pytest.mark.parametrize("size", [64, 32])
def test_every_combo_survives_noise_and_blur(size):
    clips, videos = every_combo(size, seed=1)
    assert misses([noisy(box_blur(v), sigma=8, seed=i) for i, v in enumerate(videos)], clips) == []


def test_every_combo_survives_downsampling_in_space_and_time():
    clips, videos = every_combo(64, seed=2)
    assert misses([halve(v)[::2] for v in videos], clips) == []  # 32x32, frames 0, 2, 4, 6, 8


@pytest.mark.parametrize("degrees", [-20, 20])
def test_colour_casts_and_dimming_keep_the_names(degrees):
    clips, videos = every_combo(32, seed=3)
    shifted = [np.rint(rotate_hue(v, degrees) * 0.8).astype(np.uint8) for v in videos]
    assert accuracy(shifted, clips)["all"] == 1.0


def test_missing_frames_and_a_stray_blob_do_not_matter():
    clip = Clip("triangle", "cyan", "left", "gray", size=6.0, speed=2.0, start=(40.0, 16.0))
    video = render(clip, FRAMES, 48, 48)
    video[[1, 5]] = BACKGROUNDS["gray"]  # two frames lose the object
    video[:, 40:43, 4:7] = (255, 0, 0)  # a small red blob in a corner, smaller than the object
    got = detect(video)
    assert (got.colour, got.shape, got.direction) == ("cyan", "triangle", "left")
    assert got.found == pytest.approx(7 / 9)


def test_diagnostics_measure_the_geometry():
    def still(shape):
        return detect(render(Clip(shape, "white", "still", "black", 10.0, 0.0, (31.3, 32.6)), 3, 64, 64))

    circle, square, triangle = still("circle"), still("square"), still("triangle")
    assert circle.fill == pytest.approx(math.pi / 4, abs=0.03)
    assert square.fill == pytest.approx(1.0, abs=0.03) and square.diagonal == pytest.approx(0.5, abs=0.05)
    assert triangle.fill == pytest.approx(0.5, abs=0.06) and triangle.skew == pytest.approx(-0.566, abs=0.05)
    assert circle.diagonal == pytest.approx(1.0, abs=0.05) and abs(circle.skew) < 0.02
    assert (circle.saturation, circle.found) == (0.0, 1.0) and circle.value == pytest.approx(235 / 255, abs=0.01)
    moving = detect(render(Clip("square", "red", "up", "navy", 8.0, 2.5, (30.0, 50.0)), FRAMES, 64, 64))
    assert moving.dx == pytest.approx(0.0, abs=0.1) and moving.dy == pytest.approx(-20.0, abs=0.1)
    assert moving.hue == pytest.approx(0.0, abs=1.0) and moving.direction == "up"


def test_an_empty_video_names_nothing():
    video = np.full((5, 32, 32, 3), 40, dtype=np.uint8)
    got = detect(noisy(video, sigma=8))
    assert (got.colour, got.shape, got.direction, got.found) == (None, None, None, 0.0)
    assert math.isnan(got.hue) and math.isnan(got.dx)


def test_dull_grey_objects_have_no_colour_name():
    video = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    video[:, 10:20, 10:20] = 110  # far enough from black to be found, too dull for white
    got = detect(video)
    assert (got.colour, got.shape, got.direction) == (None, "square", "still")


def test_wrong_input_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((3, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(frames, height, width, 3\)"):
        detect(np.zeros((3, 3, 32, 32), dtype=np.uint8))


def test_hue_distance_wraps_around():
    assert hue_distance(350, 10) == 20 and hue_distance(10, 350) == 20 and hue_distance(0, 180) == 180


def test_score_counts_each_attribute_and_all_three():
    truths = [
        Clip("circle", "red", "left", "black", 4.0, 1.0, (10.0, 10.0)),
        Clip("square", "blue", "still", "black", 4.0, 0.0, (10.0, 10.0)),
    ]
    nan = math.nan
    detections = [
        Detection("red", "circle", "left", *[nan] * 8, 1.0),
        Detection("blue", "triangle", None, *[nan] * 8, 1.0),
    ]
    assert score(detections, truths) == {"colour": 1.0, "shape": 0.5, "direction": 0.5, "all": 0.5, "n": 2}
    with pytest.raises(ValueError, match="as many detections as truths"):
        score(detections, truths[:1])


def test_format_scores_is_a_table():
    table = format_scores({"t2v": {"colour": 1.0, "shape": 0.5, "direction": 0.25, "all": 0.125, "n": 8}})
    assert table.splitlines() == [
        "task     colour      shape  direction        all      n",
        "t2v      100.0%      50.0%      25.0%      12.5%      8",
    ]
