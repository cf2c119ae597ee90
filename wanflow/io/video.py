"""Writing videos: H.264 MP4 (yuv420p) through PyAV, GIF, or lossless PNG frames when the path ends in ``/``.

Pixels follow the reference: clamp to [-1, 1], then ``(x + 1) / 2 * 255`` truncated to uint8. Files are written
under a temporary name beside the output and renamed at the end, so a failure never leaves a half-written output
behind. A PNG folder is written whole into a temporary folder, then swapped with the old one in one step (Linux
``renameat2``), so a reader, or a kill, sees either every old frame or every new one. A run killed while writing
leaves its hidden temporary (``.NAME.XXXXXXXX[.mp4]``) behind: ``remove_stale_temps`` removes them.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

FORMATS = (".mp4", ".gif", "/")
FRAME = re.compile(r"\d{5}\.png")  # a frame of a PNG folder: 00000.png, 00001.png, ...
_RANDOM = r"[a-z0-9_]{8}"  # the random part of ``tempfile``'s names


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8, exactly as the reference converts."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, frames, height, width) video, got {tuple(video.shape)}")
    pixels = (video.detach().float().clamp(-1, 1) + 1) / 2 * 255
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


HALF_LEVEL = 0.5 / 127.5  # half an 8-bit grey level in [-1, 1]


def kept_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``from_uint8``'s pixels moved to the middle of each level's range, so that ``to_uint8`` (which truncates, as
    the reference) gives back the same 8-bit frames, not one level less where float rounding falls short."""
    return pixels + HALF_LEVEL


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
    parent = target.parent  # a PNG folder too: its frames are written into a temporary folder beside it
    if fmt == "/" and not _replaceable(target.resolve()):
        parent = target  # ... or inside it, for the working directory
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError
        with tempfile.TemporaryFile(dir=existing):  # the only reliable test (root passes os.access everywhere)
            pass
    except OSError:
        raise ValueError(f"cannot write {os.fspath(path)!r}: {existing or parent} is not a writable folder") from None


def metadata_text(value: object) -> str:
    """A metadata value as the text a file stores: lists and mappings as JSON (readable back by any tool), the rest
    as itself."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def save_video(
    video: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    fps: int = 16,
    metadata: Mapping[str, object] | None = None,
    before_replace: Callable[[], None] | None = None,
) -> Path:
    """Write a (3, F, H, W) [-1, 1] tensor (or (F, H, W, 3) uint8 array) to ``path``; returns the path. The file is
    written under a temporary name and renamed; ``before_replace()`` runs just before the rename (a server's worker
    checks there that the job is still its own), and if it raises, nothing is renamed and the temporary is removed."""
    frames = to_uint8(video) if isinstance(video, torch.Tensor) else np.asarray(video, dtype=np.uint8)
    fmt = output_format(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: metadata_text(v) for k, v in (metadata or {}).items()}
    if fmt == "/":
        _write_pngs(frames, target, meta)
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=fmt, dir=target.parent)
    os.close(fd)
    try:
        (_write_mp4 if fmt == ".mp4" else _write_gif)(frames, Path(tmp), fps, meta)
        _as_created(0o666, tmp)
        if before_replace is not None:
            before_replace()
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

    folder = folder.resolve()  # the folder itself, not a link to it; "./" by its name
    swap = _replaceable(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent if swap else folder))
    try:
        info = PngImagePlugin.PngInfo()
        for k, v in meta.items():
            info.add_itxt(k, v)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{i:05d}.png", pnginfo=info)
        _as_created(0o666, *tmp.iterdir())
        if not folder.exists():
            _as_created(0o777, tmp)
            os.replace(tmp, folder)
        elif swap:
            os.chmod(tmp, folder.stat().st_mode & 0o7777)
            _carry_over(folder, tmp)
            _swap(tmp, folder)  # tmp now holds the old folder
        else:
            _replace_frames(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replaceable(folder: Path) -> bool:
    """Whether a PNG folder can be swapped for a new one: not the working directory (or a folder above it), which a
    shell may be in, and not a mount point."""
    cwd = Path.cwd()
    return not (folder == cwd or folder in cwd.parents or os.path.ismount(folder))


def _replace_frames(new: Path, folder: Path) -> None:
    """The frames of ``new`` in place of those of ``folder``, one rename at a time: not atomic (the folders that
    cannot be swapped only)."""
    for old in folder.iterdir():
        if FRAME.fullmatch(old.name):
            old.unlink()
    for frame in sorted(new.iterdir()):
        os.replace(frame, folder / frame.name)


def _carry_over(old: Path, new: Path) -> None:
    """Whatever the old folder holds besides its frames goes into the new one, as hard links (copies where links are
    refused): the old folder stays whole until the swap."""
    for entry in old.iterdir():
        if FRAME.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap(new: Path, target: Path) -> None:
    """``target`` becomes ``new`` and ``new`` the old ``target``, in one step where the system can. Elsewhere two
    renames, with the old folder kept whole under a hidden ``.NAME.old.XXXXXXXX`` between them (a kill there leaves
    no ``target``; ``remove_stale_temps`` puts the old folder back)."""
    if _exchange(new, target):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old)  # onto an empty folder: allowed
    os.replace(new, target)
    os.replace(old, new)  # where the caller removes it


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False where it is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it (glibc < 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):  # a kernel or file system without it
        return False
    raise OSError(error, os.strerror(error), os.fspath(b))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporaries that killed writers of the output ``path`` left beside it (a PNG folder lost
    between the two renames of ``_swap`` is put back first); returns what was removed. Only for an output that
    nothing is writing now: a live writer's temporary would go too."""
    target = Path(path).resolve()
    if not target.parent.is_dir():
        return []
    _restore_lost_folder(target)
    inside = [target] if target.is_dir() and not _replaceable(target) else []  # where "./" writes its temporary
    return [p for place in [target.parent, *inside] for p in _remove_temps(place, re.escape(target.name))]


def remove_all_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """``remove_stale_temps`` for every output in ``folder`` (a folder of outputs that nothing is writing now)."""
    return _remove_temps(Path(folder), r".+") if Path(folder).is_dir() else []


def _remove_temps(folder: Path, name: str) -> list[Path]:
    pattern = re.compile(rf"\.{name}\.(old\.)?{_RANDOM}(\.mp4|\.gif)?")
    stale = [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale


def _restore_lost_folder(target: Path) -> None:
    """The old PNG folder, back in its place, when a kill took it away between the two renames of ``_swap``."""
    old = re.compile(rf"\.{re.escape(target.name)}\.old\.{_RANDOM}")
    found = [p for p in target.parent.iterdir() if old.fullmatch(p.name)]
    if found and not target.exists():
        os.replace(max(found, key=os.path.getmtime), target)


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
