"""End-to-end time of `wanflow generate` with the built-in models: a fresh process each run, so interpreter start,
imports, model load, text encoding, sampling, decoding and MP4 writing are all counted.

    python benchmarks/builtin_generate.py                     # t2v, i2v (first frame drawn by the dataset), ti2v
    python benchmarks/builtin_generate.py --tasks t2v-A14B --repeats 3

Each output is opened with PyAV and checked (frame count, size) before its time is reported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from wanflow.builtin import FOLDERS, builtin_checkpoint
from wanflow.checkpoints.layouts import detect_layout
from wanflow.pipelines.pipeline import checkpoint_task
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"


def first_frame_png(path: Path, size: tuple[int, int]) -> None:
    """The first frame of a dataset clip matching PROMPT, as the I2V input image."""
    from PIL import Image

    from wanflow.data.shapes import combo_clips, first_frame

    width, height = size
    clip = combo_clips(0, [("red", "circle", "right")], 1, height, width, 17)[0]
    Image.fromarray(first_frame(clip, height, width)).save(path)


def run_once(task: str, out: Path, image: Path | None) -> float:
    command = [sys.executable, "-m", "wanflow", "generate", PROMPT, "--task", task, "--save_file", str(out)]
    if image is not None:
        command += ["--image", str(image)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def check_mp4(path: Path, frames: int, size: tuple[int, int]) -> None:
    with av.open(str(path)) as container:
        decoded = [f for f in container.decode(video=0)]
    got = (len(decoded), decoded[0].width, decoded[0].height)
    if got != (frames, *size):
        raise SystemExit(f"{path}: {got[0]} frames of {got[1]}x{got[2]}, expected {frames} of {size[0]}x{size[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task in args.tasks:
            spec = checkpoint_task(detect_layout(builtin_checkpoint(task)), TASKS[task])
            image = None
            if spec.image == "required":  # the I2V task needs a first frame
                image = tmp / "first.png"
                first_frame_png(image, spec.size)
            times = []
            for i in range(args.repeats):
                out = tmp / f"{task}-{i}.mp4"
                times.append(run_once(task, out, image))
                check_mp4(out, spec.frames, spec.size)
            w, h = spec.size
            print(
                f"{task}: {w}x{h}, {spec.frames} frames, {spec.steps} steps: "
                + ", ".join(f"{t:.1f}s" for t in times)
                + f" (best {min(times):.1f}s), valid MP4"
            )


if __name__ == "__main__":
    main()
