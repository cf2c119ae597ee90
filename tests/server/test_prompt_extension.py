"""``extend_prompt`` on a real server: a server started with a prompt extension model extends the prompt of a job
that asks (the job shows the extended prompt); one without refuses such a job with 422. The window options of a
longer video are checked at submission (422)."""

from __future__ import annotations

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
