"""``extend_prompt`` on a real server: a server started with a prompt extension model extends the prompt of a job
that asks (the job shows the extended prompt); one without refuses such a job with 422; on a shared queue only a
worker started with an extender takes such jobs. The window options of a longer video are checked at submission
(422)."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("httpx", reason="the server tests need the server extra and httpx")

from tests.server.conftest import Server
from tests.tiny.chat import write_chat_model

T2V = {"task": "t2v-A14B", "prompt": "a red fox in the snow", "width": 32, "height": 32, "frames": 5, "steps": 2}


@pytest.fixture(scope="module")
def extend_server(tmp_path_factory, checkpoints):
    chat = write_chat_model(tmp_path_factory.mktemp("chat"))
    data = tmp_path_factory.mktemp("data")
    srv = Server(data, {"t2v-A14B": checkpoints["t2v-A14B"]}, prompt_extend_model=chat).start()
    yield srv
    srv.stop()


def test_a_job_with_extend_prompt_gets_the_extended_prompt(extend_server):
    fields = T2V | {"seed": 5, "extend_prompt": True, "prompt_extend_lang": "en", "prompt_extend_seed": 2}
    r = extend_server.client.post("/api/jobs", json=fields)
    assert r.status_code == 202, r.text
    job = extend_server.wait(r.json()["id"])
    assert job["status"] == "done", job
    assert job["params"]["prompt"] == "a red fox in the snow" and job["params"]["extend_prompt"] is True
    assert job["extended_prompt"] and job["extended_prompt"] != "a red fox in the snow"
    plain = extend_server.client.post("/api/jobs", json=T2V | {"seed": 5}).json()
    assert extend_server.wait(plain["id"])["extended_prompt"] is None


def test_a_server_without_an_extender_refuses_extend_prompt(server):
    r = server.client.post("/api/jobs", json=T2V | {"extend_prompt": True})
    assert r.status_code == 422
    assert r.json()["detail"] == "this server extends no prompts: start it with --prompt_extend_model MODEL"


def test_window_options_are_checked_at_submission(server):
    fields = T2V | {"frames": 9, "window_frames": 5, "window_overlap": 4}
    r = server.client.post("/api/jobs", json=fields)
    assert r.status_code == 422
    assert r.json()["detail"] == "window_overlap 4 leaves no new frame in a window of 5 frames: use longer windows"
    r = server.client.post("/api/jobs", json=fields | {"window_overlap": None})
    assert r.status_code == 422
    assert r.json()["detail"] == "window_frames 5 is too short to continue from: use at least 9"


def test_on_a_shared_queue_only_a_worker_with_an_extender_takes_such_jobs(tmp_path):
    """``wanflow serve --no_worker`` and two ``wanflow worker`` processes on one SQLite queue: while only a worker
    without an extender is registered, a job asking for an extended prompt is refused (422); once a worker started
    with ``--prompt_extend_model`` has registered, such jobs are accepted and run there, plain jobs anywhere."""
    from tests.server.test_queue import Api, live_workers, wait_for, worker

    queue = str(tmp_path / "jobs.sqlite")
    chat = write_chat_model(tmp_path / "chat")
    api = Api(queue, tmp_path, "api")
    started = [worker(queue, tmp_path, "plain").start(), api.start()]
    try:
        wait_for(lambda: live_workers(api) == 1, 90, "the plain worker")
        refused = api.client.post("/api/jobs", json=T2V | {"extend_prompt": True})
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            "no worker holding model t2v-A14B extends prompts: start one with wanflow worker --prompt_extend_model"
        )
        started.append(worker(queue, tmp_path, "ext", "--prompt_extend_model", str(chat)).start())
        wait_for(lambda: live_workers(api) == 2, 90, "the extending worker")
        ids = [api.client.post("/api/jobs", json=T2V | {"extend_prompt": True, "seed": s}).json()["id"] for s in (1, 2)]
        ids.append(api.client.post("/api/jobs", json=T2V | {"seed": 3}).json()["id"])

        def done():
            views = [api.get(f"/api/jobs/{i}").json() for i in ids]
            return views if all(v["status"] == "done" for v in views) else None

        views = wait_for(done, 120, "the three jobs done")
        assert [v["worker"] for v in views[:2]] == ["ext", "ext"]
        assert all(v["extended_prompt"] and v["extended_prompt"] != T2V["prompt"] for v in views[:2])
        assert views[2]["extended_prompt"] is None
    finally:
        for process in started:
            process.signal(signal.SIGKILL)
