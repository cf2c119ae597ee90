"""Live previews through the shared data folder (``server.previews``): what a worker writes, any server reads back
once per change, with the steps done; a missing or half-written picture reads as none; a server alone clears what a
killed worker left."""

from __future__ import annotations

import io
import os

from PIL import Image

from wanflow.sampling.hooks import Step
from wanflow.server.jobs import Files
from wanflow.server.previews import SIDE, read_preview, write_preview


def step(index: int) -> Step:
    return Step(index=index, total=20, timestep=900, expert="low", guide_scale=3.0)


def test_a_written_preview_is_read_once_per_change_with_its_step(tmp_path):
    files = Files(tmp_path)
    files.prepare()
    path = files.preview("a" * 32)
    assert read_preview(path, None) is None  # nothing yet
    image = Image.new("RGB", (600, 300), (200, 10, 30))
    write_preview(path, image, step(3))
    marker, steps, png = read_preview(path, None)
    assert steps == 4
    with Image.open(io.BytesIO(png)) as shown:
        assert shown.size == (SIDE, SIDE // 2) and shown.getpixel((5, 5)) == (200, 10, 30)
    assert image.size == (600, 300)  # the caller's picture is not scaled in place
    assert read_preview(path, marker) is None  # unchanged since it was sent
    os.utime(path, ns=(marker + 10**9, marker + 10**9))
    write_preview(path, Image.new("RGB", (8, 8)), step(5))
    assert read_preview(path, marker)[1] == 6
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left beside it


def test_a_preview_that_is_not_a_picture_reads_as_none_and_a_server_alone_clears_them(tmp_path):
    files = Files(tmp_path)
    files.prepare()
    broken = files.preview("b" * 32)
    broken.write_bytes(b"\x89PNG half written")
    assert read_preview(broken, None) is None
    (broken.parent / ".x.png.123.tmp").write_bytes(b"")
    Files(tmp_path).prepare(clean=False)  # a folder shared with workers keeps them
    assert broken.exists()
    Files(tmp_path).prepare()
    assert list(broken.parent.iterdir()) == []
