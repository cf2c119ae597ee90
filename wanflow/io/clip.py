"""Reading training clips: every frame of a video file (PyAV) or one image, each resized (Lanczos) to cover the
training size and centre-cropped to it, as (F, H, W, 3) uint8. Errors are ``ValueError`` naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wanflow.io.image import load_image, resize_center_crop


def read_video(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """Every frame of the video at ``path``, sized to ``width`` x ``height``: (F, H, W, 3) uint8 (F may be 0)."""
    import av

    frames = []
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{Path(path).name}: no video stream in the file")
            for frame in container.decode(video=0):
                frames.append(np.asarray(resize_center_crop(frame.to_image(), width, height)))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{Path(path).name}: cannot read the video ({type(e).__name__}: {e})") from None
    if not frames:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(frames)


def read_still(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """An image as a one-frame clip, sized to ``width`` x ``height``: (1, H, W, 3) uint8."""
    try:
        image = load_image(path)
    except ValueError as e:
        raise ValueError(f"{Path(path).name}: {e}") from None
    return np.asarray(resize_center_crop(image, width, height))[None]
