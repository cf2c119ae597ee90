"""Writing videos: H.264 MP4 (yuv420p) through PyAV, GIF, or lossless PNG frames when the path ends in ``/``.

Pixels follow the reference: clamp to [-1, 1], then ``(x + 1) / 2 * 255`` truncated to uint8. Files are written
under a temporary name and renamed at the end, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

FORMATS = (".mp4", ".gif", "/")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8, exactly as the reference converts."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, frames, height, width) video, got {tuple(video.shape)}")
    pixels = (video.detach().float().clamp(-1, 1) + 1) / 2 * 255
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """(..., F, H, W, 3) uint8 -> (..., 3, F, H, W) float32 in [-1, 1]: what the VAE encodes."""
    return torch.from_numpy(np.asarray(frames)).movedim(-1, -4).float().div(127.5).sub(1.0)


def output_format(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    if text.endswith(("/", os.sep)):
        return "/"
    suffix = Path(text).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported output {text!r}: use a .mp4 or .gif file, or a folder path ending in '/'")
    return suffix


def check_writable(path: str | os.PathLike) -> None:
    """Fail early (before any generation work) when the output cannot be written."""
    fmt = output_format(path)
    target = Path(path)
    parent = target if fmt == "/" else target.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError
        with tempfile.TemporaryFile(dir=existing):  # the only reliable test (root passes os.access everywhere)
            pass
    except OSError:
        raise ValueError(f"cannot write {os.fspath(path)!r}: {existing or parent} is not a writable folder") from None


def save_video(
    video: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    fps: int = 16,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write a (3, F, H, W) [-1, 1] tensor (or (F, H, W, 3) uint8 array) to ``path``; returns the path."""
    frames = to_uint8(video) if isinstance(video, torch.Tensor) else np.asarray(video, dtype=np.uint8)
    fmt = output_format(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if fmt == "/":
        _write_pngs(frames, target, meta)
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=fmt, dir=target.parent)
    os.close(fd)
    try:
        (_write_mp4 if fmt == ".mp4" else _write_gif)(frames, Path(tmp), fps, meta)
        _as_created(0o666, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _write_mp4(frames: np.ndarray, path: Path, fps: int, meta: dict[str, str]) -> None:
    import av

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs an even width and height, got {w}x{h}")
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
        container.metadata.update(meta)
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "17", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(frames: np.ndarray, path: Path, fps: int, meta: dict[str, str]) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    comment = "; ".join(f"{k}={v}" for k, v in meta.items()).encode()
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, comment=comment
    )


def _write_pngs(frames: np.ndarray, folder: Path, meta: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        info = PngImagePlugin.PngInfo()
        for k, v in meta.items():
            info.add_itxt(k, v)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{i:05d}.png", pnginfo=info)
        if folder.exists():
            for old in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
                old.unlink()
            for f in sorted(tmp.iterdir()):
                os.replace(f, folder / f.name)
        else:
            _as_created(0o666, *tmp.iterdir())
            _as_created(0o777, tmp)
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _as_created(mode: int, *paths: str | os.PathLike) -> None:
    """Give files made by ``tempfile`` (0600, a folder 0700) the permissions ``open`` would have: ``mode`` less the
    umask (read once, without changing it: ``os.umask`` swaps it process-wide)."""
    allowed = mode & ~_umask()
    for path in paths:
        os.chmod(path, allowed)


def _umask() -> int:
    try:  # Linux 4.7+: the umask without the swap
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
