"""A video writer that kills itself (SIGKILL, as ``kill -9`` or the OOM killer) at a chosen point of ``save_video``:
``python -m tests.io.killed_writer OUTPUT STAGE``. The new frames are 9 frames of 16x16 pixels, all 200."""

from __future__ import annotations

import os
import shutil
import signal
import sys

import numpy as np

from wanflow.io import video

NEW = np.full((9, 16, 16, 3), 200, dtype=np.uint8)


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def die_at_save(n: int) -> None:
    """Killed while the n-th new PNG frame is being written."""
    from PIL import Image

    save, count = Image.Image.save, [0]

    def save_or_die(self, *args, **kwargs):
        count[0] += 1
        if count[0] == n:
            die()
        return save(self, *args, **kwargs)

    Image.Image.save = save_or_die


def die_after(module, name: str, calls: int = 1) -> None:
    """Killed right after the ``calls``-th call of ``module.name`` has returned."""
    original, count = getattr(module, name), [0]

    def call_then_die(*args, **kwargs):
        result = original(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            die()
        return result

    setattr(module, name, call_then_die)


def main(output: str, stage: str) -> None:
    if stage == "frame":  # writing the new frames into the temporary folder
        die_at_save(5)
    elif stage == "before_swap":  # every new frame written, the old folder still in place
        video._swap = die
    elif stage == "after_swap":  # swapped, the old frames not yet removed
        die_after(video, "_exchange")
    elif stage == "cleanup":  # removing the old frames
        shutil.rmtree = die
    elif stage == "between_renames":  # a system without renameat2: after the first of the two renames
        video._exchange = lambda a, b: False
        die_after(os, "replace")
    elif stage == "mp4":  # encoding an mp4 under its temporary name
        video._write_mp4 = lambda frames, path, fps, meta: (path.write_bytes(b"partial"), die())
    video.save_video(NEW, output)


if __name__ == "__main__":
    main(*sys.argv[1:])
