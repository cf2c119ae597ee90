"""The step cache through the server (issue 25): a job asks for it by name, and a bad value is answered 422 at
submission, with the message that says what to write, before the job is queued."""

from __future__ import annotations

import io

import av
import pytest

for _name in ("httpx", "fastapi", "uvicorn", "multipart", "fastapi_offline"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx (pip install wanflow[server])")

from tests.server.test_server import events  # noqa: E402

JOB = {"task": "t2v-A14B", "prompt": "a cached fox", "width": 32, "height": 32, "frames": 5, "steps": 12}


@pytest.mark.parametrize("bad", ["teacache", "magcache:-1", "magcache:fast"])
def test_a_bad_cache_is_a_422_at_submission(server, bad):
    before = len(server.client.get("/api/jobs").json())
    r = server.client.post("/api/jobs", json=JOB | {"cache": bad})
    assert r.status_code == 422 and "magcache" in r.text, r.text
    assert len(server.client.get("/api/jobs").json()) == before  # nothing was queued


def test_a_job_runs_with_the_cache_it_asked_for(server):
    job = server.client.post("/api/jobs", json=JOB | {"cache": "magcache:0.5"}).json()
    assert job["params"]["cache"] == "magcache:0.5"
    stream = events(server.client, job["id"])
    assert stream[-1][0] == "end" and stream[-1][1]["status"] == "done", stream[-1]
    video = server.client.get(stream[-1][1]["video_url"])
    with av.open(io.BytesIO(video.content)) as container:  # the setting the frames were made with, in the file
        assert container.metadata["cache"] == "magcache:0.5"
