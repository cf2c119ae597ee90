"""The server end to end: a real uvicorn process on tiny checkpoints, spoken to over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from pathlib import Path

import av
import pytest
from PIL import Image

for _name in ("httpx", "fastapi", "uvicorn", "multipart", "fastapi_offline"):
    pytest.importorskip(
        _name, reason="the server tests need the server extra and httpx (pip install wanflow[server] httpx)"
    )

import httpx  # noqa: E402

from tests.server.conftest import TOKEN, Server  # noqa: E402
from wanflow.server.cli import add_arguments, check_exposure  # noqa: E402
from wanflow.server.jobs import JobStore, QueueFull  # noqa: E402

T2V = {"task": "t2v-A14B", "prompt": "a red fox in the snow", "width": 32, "height": 32, "frames": 5, "steps": 2}


def png(size=(40, 24), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> tuple[int, int, int]:
    """(frames, width, height) of an MP4."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


def events(client: httpx.Client, job_id: str, **params: str) -> list[tuple[str, dict]]:
    """The job's server-sent events as (name, data) until it ends; ``params``: the stream's query (``preview``)."""
    out, name = [], None
    with client.stream("GET", f"/api/jobs/{job_id}/events", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if name in ("end", "deleted"):
                    break
    return out


def test_submit_watch_download(server):
    job = server.client.post("/api/jobs", json=T2V | {"steps": 8, "seed": 7}).json()
    assert job["status"] == "queued"
    stream = events(server.client, job["id"])
    assert stream[-1][0] == "end" and stream[-1][1]["status"] == "done"
    progress = [data["progress"] for _, data in stream]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(data["stage"] == "denoise" and data["steps"] == 8 for _, data in stream)
    done = stream[-1][1]
    assert done["seed"] == "7" and done["expert"] in ("high", "low", "high_noise", "low_noise")
    video = server.client.get(done["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert decode(video.content) == (5, 32, 32)


def test_openai_shape_with_image(server):
    """TI2V through ``POST /v1/videos`` with an ``input_reference`` upload; ``seconds`` becomes 4n+1 frames."""
    files = {"input_reference": ("ref.png", png((48, 48)), "image/png")}
    form = {"prompt": "a fox", "model": "ti2v-5B", "size": "32x32", "seconds": "0.2"}  # 0.2 s at 24 fps -> 5
    video = server.client.post("/v1/videos", data=form, files=files).json()
    assert video["object"] == "video" and video["status"] == "queued" and video["model"] == "ti2v-5B"
    deadline = time.monotonic() + 60
    while video["status"] in ("queued", "in_progress") and time.monotonic() < deadline:
        assert 0 <= video["progress"] <= 100
        time.sleep(0.1)
        video = server.client.get(f"/v1/videos/{video['id']}").json()
    assert video["status"] == "completed" and video["progress"] == 100, video
    content = server.client.get(f"/v1/videos/{video['id']}/content")
    frames, width, height = decode(content.content)
    assert frames == 5 and width * height <= 32 * 32
    listed = server.client.get("/v1/videos").json()
    assert listed["object"] == "list" and video["id"] in [v["id"] for v in listed["data"]]
    assert server.client.delete(f"/v1/videos/{video['id']}").json()["deleted"] is True
    assert server.client.get(f"/v1/videos/{video['id']}").status_code == 404
    assert server.client.get(f"/v1/videos/{video['id']}/content").status_code == 404


def test_i2v_json_with_base64_image(server):
    image = "data:image/png;base64," + base64.b64encode(png()).decode()
    job = server.client.post("/api/jobs", json=T2V | {"task": "i2v-A14B", "image": image, "steps": 1}).json()
    done = server.wait(job["id"])
    assert done["status"] == "done", done
    assert done["has_image"] and decode(server.client.get(done["video_url"]).content)[0] == 5


def test_cancel_running_and_queued(server):
    running = server.client.post("/api/jobs", json=T2V | {"steps": 20}).json()
    queued = server.client.post("/api/jobs", json=T2V).json()
    job, deadline = server.wait(running["id"], ("running",)), time.monotonic() + 30
    while (job["step"] or 0) < 1 and time.monotonic() < deadline:
        job = server.client.get(f"/api/jobs/{running['id']}").json()
    assert server.client.post(f"/api/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert server.client.post(f"/api/jobs/{running['id']}/cancel").status_code == 200
    job = server.wait(running["id"])
    assert job["status"] == "cancelled" and job["step"] < 20 and "cancel" in job["error"]
    again = server.client.post(f"/api/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and "finished" in again.json()["detail"]
    assert server.client.get(f"/api/jobs/{running['id']}/video").status_code == 409


def test_delete_removes_job_and_files(server):
    job = server.wait(server.client.post("/api/jobs", json=T2V).json()["id"])
    path = server.data / "videos" / f"{job['id']}.mp4"
    assert path.is_file()
    assert server.client.delete(f"/api/jobs/{job['id']}").status_code == 200
    assert not path.exists()
    assert server.client.get(f"/api/jobs/{job['id']}").status_code == 404


def test_fifty_concurrent_submissions(server):
    ids, errors = [], []

    def submit(i: int) -> None:
        try:
            r = httpx.post(
                f"{server.url}/api/jobs",
                json=T2V | {"prompt": f"fox {i}", "steps": 1},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            (ids if r.status_code == 202 else errors).append(r.json()["id"] if r.status_code == 202 else r.text)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ids) == len(set(ids)) == 50
    listed = [j for j in server.client.get("/api/jobs").json() if j["params"]["prompt"].startswith("fox ")]
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert sorted(j["params"]["prompt"] for j in listed) == sorted(f"fox {i}" for i in range(50))
    for job_id in ids:  # cancel the rest, to keep the run short
        server.client.post(f"/api/jobs/{job_id}/cancel")
    assert all(server.wait(job_id)["status"] in ("done", "cancelled") for job_id in ids)


BAD = [
    ({"prompt": "x" * 2001}, 422, "prompt is 2001 characters"),
    ({"prompt": ""}, 422, "prompt"),
    ({"width": 512, "height": 512}, 422, "over the limit"),
    ({"height": None}, 422, "both width and height"),
    ({"frames": 6}, 422, "4n+1"),
    ({"frames": 13}, 422, "frames 13 is over the limit"),
    ({"steps": 21}, 422, "steps 21 is over the limit"),
    ({"steps": 0}, 422, "steps"),
    ({"guide_scale": [1, 2, 3]}, 422, "guide_scale"),
    ({"solver": "rk4"}, 422, "solver"),
    ({"seed": -2}, 422, "seed"),
    ({"task": "t2v-1.3B"}, 422, "unknown task"),
    ({"colour": "red"}, 422, "colour"),
    ({"task": "i2v-A14B"}, 422, "needs an image"),
]


@pytest.mark.parametrize(("change", "status", "message"), BAD)
def test_bad_json(server, change, status, message):
    r = server.client.post("/api/jobs", json=T2V | change)
    assert r.status_code == status and message in r.json()["detail"], r.text


BAD_UPLOADS = [
    ("ti2v-5B", ("x.png", b"not an image at all", "image/png"), 422, "could not be decoded"),
    ("ti2v-5B", ("x.txt", png(), "text/plain"), 415, "not accepted"),
    ("ti2v-5B", ("x.png", png((400, 400)) + b"\0" * 200_000, "image/png"), 413, "over the limit"),
    ("t2v-A14B", ("x.png", png(), "image/png"), 422, "takes no image"),
]


@pytest.mark.parametrize(("task", "upload", "status", "message"), BAD_UPLOADS)
def test_bad_uploads(server, task, upload, status, message):
    form = {k: str(v) for k, v in (T2V | {"task": task}).items()}
    r = server.client.post("/api/jobs", data=form, files={"image": upload})
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_bad_requests(server):
    c = server.client
    assert c.post("/api/jobs", content=b"prompt=x", headers={"content-type": "text/plain"}).status_code == 415
    r = c.post("/api/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = c.post("/v1/videos", data={"prompt": "a", "size": "big"})
    assert r.status_code == 422 and "WIDTHxHEIGHT" in r.json()["error"]["message"]
    assert c.post("/v1/videos", data={"prompt": "a", "seconds": "-1"}).status_code == 422
    assert c.get("/api/jobs/../../etc/passwd").status_code == 404
    assert c.get("/api/jobs/0123456789abcdef0123456789abcdef/video").status_code == 404
    assert c.get("/v1/videos/nope").json()["error"]["type"] == "invalid_request_error"


def test_body_limit_without_content_length(server):
    """A chunked body (no Content-Length) is cut off at the limit too."""

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield b"x" * 65536

    r = server.client.post("/api/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "over" in r.json()["detail"]
    r = server.client.post("/api/jobs", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_token(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{server.url}/api/jobs", json=T2V, headers=headers)
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert httpx.get(f"{server.url}/v1/videos", headers=headers).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/api/jobs?access_token={TOKEN}").status_code == 401  # issue 21: header only here
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_service_endpoints(server):
    c = server.client
    health = c.get("/health").json()
    assert health["status"] == "ok" and set(health["tasks"]) == {"t2v-A14B", "i2v-A14B", "ti2v-5B"}
    metrics = c.get("/metrics").text
    assert 'wanflow_jobs{status="done"}' in metrics and "wanflow_queue_length" in metrics
    assert "wanflow_generation_seconds_count" in metrics
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}/events", "/v1/videos", "/v1/videos/{video_id}/content"} <= set(paths)
    assert c.get("/docs").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and '<form id="form">' in page.text
    for name in ("app.js", "style.css"):
        assert c.get(f"/static/{name}").status_code == 200
    defaults = c.get("/api/tasks").json()["tasks"]
    assert defaults["i2v-A14B"]["image"] == "required" and defaults["t2v-A14B"]["image"] == "none"


def test_restart_loses_nothing(tmp_path, checkpoints):
    """A graceful stop re-queues the running job; after a SIGKILL with one running and two queued, each ends."""
    server = Server(tmp_path, {"t2v-A14B": checkpoints["t2v-A14B"]}, step_delay=0.1, max_queue=2).start()
    try:
        running = server.client.post("/api/jobs", json=T2V | {"steps": 20}).json()["id"]
        server.wait(running, ("running",))
        server.stop()  # SIGTERM: the worker stops at the next step and puts the job back
        server.start()
        assert server.wait(running, ("running",))["attempts"] == 1
        queued = [server.client.post("/api/jobs", json=T2V | {"prompt": f"q{i}"}).json()["id"] for i in range(2)]
        full = server.client.post("/api/jobs", json=T2V)
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        server.kill()
        server.start()
        jobs = [server.wait(job_id) for job_id in [running, *queued]]
        assert sorted(j["id"] for j in server.client.get("/api/jobs").json()) == sorted([running, *queued])
    finally:
        server.stop()
    assert [j["status"] for j in jobs] == ["done", "done", "done"], jobs
    assert jobs[0]["attempts"] == 2  # running when the server died, and run again


def test_recovery_gives_up_after_max_attempts(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite", max_attempts=2)
    job = store.add("t2v-A14B", {"prompt": "a"}, False, max_queue=5)
    for attempt in (1, 2):
        assert store.claim()["attempts"] == attempt
        assert store.recover() == [job["id"]]  # a crash while it was running
    final = store.get(job["id"])
    assert final["status"] == "failed" and "stopped during this job 2 times" in final["error"]
    store.add("t2v-A14B", {"prompt": "b"}, False, max_queue=1)
    with pytest.raises(QueueFull):
        store.add("t2v-A14B", {"prompt": "c"}, False, max_queue=1)
    store.close()


def test_cli_refuses_open_host_without_token():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--ckpt_dir", "x"])
    assert (args.host, args.port, args.token) == ("127.0.0.1", 8000, None)
    check_exposure("127.0.0.1", None)
    check_exposure("localhost", None)
    check_exposure("0.0.0.0", "secret")
    with pytest.raises(ValueError, match="--token"):
        check_exposure("0.0.0.0", None)


def test_web_page_in_a_browser(server, browser):
    """The page in headless Chromium: submit from the form, watch the queue, play the video in the gallery."""
    page = browser.new_page()
    try:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#task option[value='t2v-A14B']", state="attached")
        page.select_option("#task", "t2v-A14B")
        assert page.is_hidden("#image-row")
        page.fill("textarea[name=prompt]", "a browser fox")
        for name, value in {"width": "32", "height": "32", "frames": "5", "steps": "12", "seed": "3"}.items():
            page.fill(f"input[name={name}]", value)
        page.click("button[type=submit]")
        page.wait_for_selector("#queue progress", timeout=20_000)
        card = page.locator("#gallery .card", has_text="a browser fox")
        card.locator("video").wait_for(timeout=60_000)
        assert page.text_content("#form-error") == ""
        assert "32x32" in card.text_content()
        loaded = page.wait_for_function(
            "v => v.readyState >= 1 ? [v.videoWidth, v.videoHeight] : (v.error ? ['error', v.error.code] : null)",
            arg=card.locator("video").element_handle(),
            timeout=20_000,
        ).json_value()
        artefacts = Path(os.environ.get("WANFLOW_TEST_ARTIFACTS", "test-artifacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artefacts / "web-page.png"), full_page=True)  # kept after the run
        assert loaded in ([32, 32], ["error", 4]), loaded  # 4: this Chromium build lacks H.264
        assert not errors
    finally:
        page.close()
