"""Digests of the frames the three built-in models make for fixed requests: run before and after a change to the
core, and compare (``--check FILE``). Bit-identical frames give identical digests.

    python scripts/frame_digests.py --write before.json     # on the old code
    python scripts/frame_digests.py --check before.json     # on the new code: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np
import torch
from PIL import Image

CASES = (  # (name, task, prompt, with an image, extra keywords)
    ("t2v", "t2v-A14B", "a red circle moving right", False, {}),
    ("t2v-euler", "t2v-A14B", "a green square moving left", False, {"solver": "euler", "steps": 7}),
    ("t2v-dpm", "t2v-A14B", "a blue circle moving up", False, {"solver": "dpm++", "guide_scale": (2.0, 5.0)}),
    ("i2v", "i2v-A14B", "a yellow square moving down", True, {}),
    ("ti2v", "ti2v-5B", "a white triangle moving left", False, {}),
    ("ti2v-image", "ti2v-5B", "a cyan circle moving right", True, {}),
)


def test_image() -> Image.Image:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[20:40, 24:44] = (230, 200, 40)
    return Image.fromarray(pixels)


def digests() -> dict[str, str]:
    from wanflow.builtin import builtin_checkpoint
    from wanflow.pipelines.pipeline import WanPipeline

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out, pipes = {}, {}
    for name, task, prompt, image, extra in CASES:
        pipe = pipes.get(task) or WanPipeline.from_pretrained(builtin_checkpoint(task), task=task, device="cpu")
        pipes[task] = pipe
        video = pipe(prompt, image=test_image() if image else None, seed=1234, **extra)
        frames = video.frames.contiguous().numpy()
        out[name] = hashlib.sha256(frames.tobytes()).hexdigest()
        print(name, tuple(frames.shape), out[name][:16], file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write")
    group.add_argument("--check")
    args = parser.parse_args()
    now = digests()
    if args.write:
        with open(args.write, "w") as f:
            json.dump(now, f, indent=1)
        return 0
    with open(args.check) as f:
        before = json.load(f)
    bad = [k for k in before if before[k] != now.get(k)]
    print("identical" if not bad else f"DIFFERENT: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
