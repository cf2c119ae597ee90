"""The drift measure of a longer video: known changes of the object's colour and size and of the background, per
window, read back from the pixels."""

import numpy as np

from wanflow.evaluation.drift import Drift, format_drift, video_drift, window_ranges


def clip(frames: int, colour, background, side: int) -> np.ndarray:
    video = np.empty((frames, 64, 64, 3), np.uint8)
    video[:] = background
    video[:, 20 : 20 + side, 20 : 20 + side] = colour
    return video


def test_known_changes_are_measured_per_window():
    ranges = window_ranges()
    assert ranges == [(0, 9), (9, 13), (13, 17)]  # 3 windows of 9 frames overlapping by 4: 9 + 4 + 4 new frames
    video = np.concatenate(
        [
            clip(9, (200, 30, 30), (40, 40, 120), 12),
            clip(4, (230, 30, 30), (40, 40, 120), 12),  # the object 30 levels redder
            clip(4, (200, 30, 30), (40, 40, 160), 17),  # the background 40 bluer; the object twice as large
        ]
    )
    drift = video_drift(video, ranges)  # (2 later windows, [colour, size, background])
    np.testing.assert_allclose(drift[0], [30, 0, 0], atol=0.5)
    np.testing.assert_allclose(drift[1], [0, 17**2 / 12**2 - 1, 40], atol=0.5)


def test_format_drift_is_a_table():
    text = format_drift({("t2v", 0.0): Drift([1.0, 2.0], [0.1, 0.2], [3.0, 4.0], 9)})
    assert text.splitlines()[1:] == [
        "t2v   0       2       1.0            10.0%        3.0",
        "t2v   0       3       2.0            20.0%        4.0",
    ]
