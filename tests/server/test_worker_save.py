"""A worker that loses its job while writing the video (a save slower than its lease) never replaces the file of the
worker that took the job over: the lease is renewed again just before the final rename."""

from __future__ import annotations

import time

import numpy as np
import pytest

from wanflow.io.video import save_video
from wanflow.server.jobs import Files, Models
from wanflow.server.sqlite_store import SqliteStore
from wanflow.server.worker import Lost, Worker


class SlowVideo:
    """A video whose writing outlasts the writer's lease: the job goes to worker B, which saves its own video
    first, while A's file is still under its temporary name."""

    def __init__(self, frames: np.ndarray, takeover):
        self.frames, self.takeover = frames, takeover

    def save(self, path, before_replace=None):
        def late():
            self.takeover()
            if before_replace is not None:
                before_replace()

        return save_video(self.frames, path, fps=8, before_replace=late)


def test_a_worker_that_lost_its_job_while_saving_leaves_the_new_owners_video(tmp_path):
    store, files = SqliteStore(tmp_path / "jobs.sqlite"), Files(tmp_path / "data")
    files.prepare()
    job = store.add("t2v-A14B", {"prompt": "x"}, False, max_queue=10)
    a = Worker(store, Models({}, {}), files, name="a", lease_seconds=0.2)
    store.claim("a", ["t2v-A14B"], lease_seconds=0.2)
    mine, theirs = np.zeros((1, 16, 16, 3), np.uint8), np.full((1, 16, 16, 3), 200, np.uint8)

    def takeover():
        time.sleep(0.3)  # a's lease runs out
        assert store.expire() == [job["id"]]
        assert store.claim("b", ["t2v-A14B"])["attempts"] == 2
        save_video(theirs, files.video(job["id"]), fps=8)

    with pytest.raises(Lost):
        a.save(job["id"], SlowVideo(mine, takeover))
    import av

    with av.open(str(files.video(job["id"]))) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(int(frame.mean()) - 200) < 5  # b's video, not a's black one
    assert sorted(p.name for p in files.video(job["id"]).parent.iterdir()) == [f"{job['id']}.mp4"]  # no temporary
    store.close()
