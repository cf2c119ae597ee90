"""A writer killed at any point leaves either the old output whole or the new one complete, and the temporaries it
leaves are removed: by ``remove_stale_temps`` (the CLI, before writing), and by the server's ``Files``."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wanflow.io.video import remove_all_stale_temps, remove_stale_temps, save_video
from wanflow.server.jobs import Files

ROOT = Path(__file__).resolve().parents[2]
OLD = np.full((17, 16, 16, 3), 50, dtype=np.uint8)
NEW_VALUE, NEW_FRAMES = 200, 9  # what tests/io/killed_writer.py writes


def kill_writer(output: str, stage: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "tests.io.killed_writer", output, stage], cwd=ROOT, env=env, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def old_folder(folder: Path) -> None:
    save_video(OLD, f"{folder}/")
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "kept.txt").write_text("also mine")


def frames_in(folder: Path) -> tuple[int, set[int]]:
    """(number of frames, the pixel values they hold); the frames must be numbered 0..n-1."""
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(len(names))]
    return len(names), {int(v) for name in names for v in np.unique(np.asarray(Image.open(folder / name)))}


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    ("stage", "expect"),
    [("frame", "old"), ("before_swap", "old"), ("after_swap", "new"), ("cleanup", "new"), ("between_renames", "old")],
)
def test_png_folder_is_old_or_new_whatever_the_kill(tmp_path, stage, expect):
    folder = tmp_path / "frames"
    old_folder(folder)
    kill_writer(f"{folder}/", stage)
    if stage == "between_renames":  # no renameat2: the old folder waits, whole, under a hidden name
        assert not folder.exists() and any(".frames.old." in name for name in hidden(tmp_path))
    removed = remove_stale_temps(f"{folder}/")  # what the CLI does before it writes
    assert removed and hidden(tmp_path) == []
    want = (len(OLD), {50}) if expect == "old" else (NEW_FRAMES, {NEW_VALUE})
    assert frames_in(folder) == want  # all the old frames, or all the new ones: never a mix
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "sub" / "kept.txt").read_text() == "also mine"


def test_png_folder_replaced_whole_keeps_other_files_and_mode(tmp_path):
    folder = tmp_path / "frames"
    old_folder(folder)
    folder.chmod(0o751)
    save_video(np.full((3, 16, 16, 3), 9, dtype=np.uint8), f"{folder}/")
    assert frames_in(folder) == (3, {9})  # frames 3..16 of the old video are gone
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".png")) == ["notes.txt", "sub"]
    assert folder.stat().st_mode & 0o777 == 0o751 and hidden(tmp_path) == []


def test_killed_mp4_writer_leaves_a_temp_that_is_removed_for_its_output_only(tmp_path):
    out = tmp_path / "v.mp4"
    kill_writer(str(out), "mp4")
    (stale,) = hidden(tmp_path)
    assert stale.startswith(".v.mp4.") and stale.endswith(".mp4") and not out.exists()
    unrelated = [".v.mp4.backup", ".w.mp4.abcdefgh.mp4", "x.mp4"]
    for name in unrelated:
        (tmp_path / name).write_text("keep")
    assert [p.name for p in remove_stale_temps(out)] == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(unrelated)


def test_server_files_clean_temps_on_restart_and_on_delete(tmp_path):
    files = Files(tmp_path)
    files.prepare()
    a, b = files.video("a" * 32), files.video("b" * 32)
    kill_writer(str(a), "mp4")
    kill_writer(str(b), "mp4")
    (tmp_path / "videos" / "c.mp4").write_text("a finished video")
    assert len(hidden(tmp_path / "videos")) == 2
    files.remove("a" * 32)  # DELETE of job a: its temporary goes, b's stays
    (left,) = hidden(tmp_path / "videos")
    assert left.startswith(f".{b.name}.")
    files.prepare()  # a restart: every temporary goes
    assert hidden(tmp_path / "videos") == [] and (tmp_path / "videos" / "c.mp4").exists()
    assert remove_all_stale_temps(tmp_path / "missing") == []


def test_the_working_directory_is_written_in_place_not_swapped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_video(OLD, "./")
    inode = tmp_path.stat().st_ino
    save_video(np.full((3, 16, 16, 3), 9, dtype=np.uint8), "./")  # a shell may be in this folder: never replaced
    assert tmp_path.stat().st_ino == inode and Path.cwd() == tmp_path
    assert frames_in(tmp_path) == (3, {9}) and hidden(tmp_path) == []
    assert not [name for name in hidden(tmp_path.parent) if name.startswith(f".{tmp_path.name}.")]
