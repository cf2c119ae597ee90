"""Reading clips: every frame of a video file (PyAV) or one image, each resized (Lanczos) to cover the training size
and centre-cropped to it, as (F, H, W, 3) uint8 (training data); or every frame of a video at its own size, as PIL
images (``read_frames``: the start of video-to-video). Errors are ``ValueError`` naming the file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from wanflow.io.image import load_image, resize_center_crop
from wanflow.io.video import FRAME, to_uint8


def read_video(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """Every frame of the video at ``path``, sized to ``width`` x ``height``: (F, H, W, 3) uint8 (F may be 0)."""
    frames = [np.asarray(resize_center_crop(frame.to_image(), width, height)) for frame in decoded_frames(path)]
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


def read_frames(source: object, max_frames: int | None = None) -> list[Image.Image]:
    """Every frame of ``source`` at its own size (its first ``max_frames``, where given), as RGB images: a video file
    (PyAV reads it: MP4, WebM, GIF, ...), a folder of numbered PNG frames (``00000.png``, ...: what ``--save_file
    DIR/`` writes), a sequence of PIL images, (F, H, W, 3) frames (uint8, or float in [0, 1] rounded to 8 bits, as
    numpy or torch), a wanflow ``Video`` or diffusers' pipeline output (its first video)."""
    frames = getattr(source, "frames", None)
    if frames is not None and not isinstance(source, (str, os.PathLike)):
        if getattr(frames, "ndim", 0) == 4 and frames.shape[0] == 3:  # a wanflow Video: the 8-bit frames it saves
            return read_frames(to_uint8(frames[:, :max_frames]))
        return read_frames(frames[0], max_frames)  # diffusers' output: a batch of videos
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source), max_frames)
    if isinstance(source, (list, tuple)) and all(isinstance(f, Image.Image) for f in source):
        return [f.convert("RGB") for f in source[:max_frames]]
    return _from_array(source, max_frames)


def _read_path(path: Path, max_frames: int | None) -> list[Image.Image]:
    if path.is_dir():
        pngs = sorted(p for p in path.iterdir() if FRAME.fullmatch(p.name))
        if not pngs:
            raise ValueError(f"{path}: a folder of frames needs 00000.png, 00001.png, ... and has none")
        return [load_image(p) for p in pngs[:max_frames]]
    if not path.is_file():
        raise ValueError(f"video not found: {path}")
    frames = [frame.to_image().convert("RGB") for frame in decoded_frames(path, max_frames)]
    if not frames:
        raise ValueError(f"{path.name}: the video has no frames")
    return frames


def decoded_frames(source: str | os.PathLike | BinaryIO, max_frames: int | None = None) -> Iterator:
    """PyAV's decoded frames of a video file (a path or a binary file object), its first ``max_frames`` where given;
    ``ValueError`` for a file that is not a video."""
    import av

    name = Path(source).name if isinstance(source, (str, os.PathLike)) else "the video"
    try:
        with av.open(source if not isinstance(source, os.PathLike) else os.fspath(source)) as container:
            if not container.streams.video:
                raise ValueError(f"{name}: no video stream in the file")
            for i, frame in enumerate(container.decode(video=0)):
                if max_frames is not None and i >= max_frames:
                    return
                yield frame
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: cannot read the video ({type(e).__name__}: {e})") from None


def _from_array(source: object, max_frames: int | None) -> list[Image.Image]:
    if hasattr(source, "detach"):  # a torch tensor
        source = source.detach().cpu().numpy()
    array = np.asarray(source) if isinstance(source, (np.ndarray, list, tuple)) else None
    pixels = array is not None and (array.dtype == np.uint8 or array.dtype.kind == "f")  # 8-bit, or [0, 1] floats
    if not pixels or array.ndim != 4 or array.shape[-1] != 3 or not len(array):
        raise ValueError(
            "video must be a path, PIL images, (frames, height, width, 3) frames, a wanflow Video or diffusers' "
            f"output; got {type(source).__name__}" + (f" of shape {array.shape}" if array is not None else "")
        )
    array = array[:max_frames]
    if array.dtype.kind == "f":
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in array]
