"""Video to video through the server: a ``video`` file field (multipart) with ``strength`` gives the Python API's
video from the same file; the upload's refusals (type, bytes, not a video, frames over the limit, JSON, strength
without a video) leave nothing queued and no file; the page sends the video it is given."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

for _name in ("httpx", "fastapi", "uvicorn", "multipart"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx")

from tests.server.test_last_image import mp4, nothing_queued, queued, served, state  # noqa: E402
from wanflow.io.video import save_video  # noqa: E402
from wanflow.pipelines.pipeline import WanPipeline  # noqa: E402

T2V = {"task": "t2v-A14B", "prompt": "a fox runs along a river", "steps": 4, "strength": 0.5, "seed": 77}


def mp4_file(tmp_path, frames: int, size: int = 32, seed: int = 0) -> bytes:
    """An MP4 of ``frames`` random smooth frames of ``size`` x ``size``."""
    g = torch.Generator().manual_seed(seed)
    video = torch.nn.functional.interpolate(torch.rand(1, 3, frames, 4, 4, generator=g), (frames, size, size))[0]
    return save_video(video * 2 - 1, tmp_path / f"in{frames}_{size}_{seed}.mp4", fps=16).read_bytes()


def test_a_video_job_equals_the_python_api(server, checkpoints, tmp_path):
    data = mp4_file(tmp_path, 9)
    form = {k: str(v) for k, v in T2V.items()}
    r = server.client.post("/api/jobs", data=form, files={"video": ("in.mp4", data, "video/mp4")})
    assert r.status_code == 202, r.text
    job, frames, meta = served(server, r.json())
    assert job["params"]["has_video"] is True and job["params"]["strength"] == 0.5 and meta["video_strength"] == "0.5"
    stored = server.data / "inputs" / f"{job['id']}_video"
    assert stored.read_bytes() == data
    (tmp_path / "same.mp4").write_bytes(data)
    pipe = WanPipeline.from_pretrained(checkpoints["t2v-A14B"])
    call = dict(steps=4, seed=77, video=tmp_path / "same.mp4")
    expected = mp4(pipe(T2V["prompt"], strength=0.5, **call).save(tmp_path / "api.mp4").read_bytes())[0]
    assert frames.shape == (9, 32, 32, 3)  # the video's own frames and size
    np.testing.assert_array_equal(frames, expected)
    other = mp4(pipe(T2V["prompt"], strength=1.0, **call).save(tmp_path / "other.mp4").read_bytes())[0]
    assert np.abs(other.astype(int) - frames.astype(int)).max() > 10  # the strength is the job's
    assert server.client.delete(f"/api/jobs/{job['id']}").json()["deleted"] is True
    assert not stored.exists()


def test_refusals_leave_nothing(server, tmp_path):
    before = state(server)
    form = {k: str(v) for k, v in T2V.items()}
    long = mp4_file(tmp_path, 13)  # the test server's frame limit is 9
    answers = {
        "type": server.client.post("/api/jobs", data=form, files={"video": ("a.gif", b"GIF89a", "image/gif")}),
        "not a video": server.client.post("/api/jobs", data=form, files={"video": ("a.mp4", b"\0" * 100, "video/mp4")}),
        "too long": server.client.post("/api/jobs", data=form, files={"video": ("a.mp4", long, "video/mp4")}),
        "json": server.client.post("/api/jobs", json=T2V | {"video": "AAAA"}),
        "no video": server.client.post("/api/jobs", json=T2V),
        "two": server.client.post("/api/jobs", data=form, files=[("video", ("a.mp4", long, "video/mp4"))] * 2),
        "bytes": server.client.post("/api/jobs", data=form, files={"video": ("a.mp4", b"\0" * 400_000, "video/mp4")}),
    }
    codes = {name: (r.status_code, r.json()["detail"]) for name, r in answers.items()}
    assert codes["type"][0] == 415 and "video type 'image/gif' not accepted" in codes["type"][1]
    assert codes["not a video"] == (422, "the video could not be decoded; send an MP4, WebM or QuickTime file")
    assert codes["too long"][0] == 422 and "the video has more than 9 frames" in codes["too long"][1]
    assert codes["json"][0] == 422 and "send the video as a file" in codes["json"][1]
    assert codes["no video"][0] == 422 and "strength is how much of a given video to redo" in codes["no video"][1]
    assert codes["two"] == (422, "more than one video file")
    assert codes["bytes"] == (413, "the video is over the limit of 300000 bytes")  # within a form's body limit
    assert nothing_queued(server, before)
    first_five = server.client.post(
        "/api/jobs", data=form | {"frames": "5"}, files={"video": ("a.mp4", long, "video/mp4")}
    )  # frames given: the long video's first 5
    assert first_five.status_code == 202, first_five.text
    _, frames, _ = served(server, first_five.json())
    assert frames.shape == (5, 32, 32, 3)


def through_the_page(browser, server, video, prompt: str, fields: dict, extend: bool = False) -> tuple[dict, str]:
    """Sends ``video`` and ``fields`` with the page's form, waits for the job to finish; the job and the text of its
    gallery card."""
    from tests.server.conftest import TOKEN

    def signed_in(page):
        page.goto(server.url + "/")
        page.fill("#token", TOKEN)
        page.locator("#token").blur()

    page = browser.new_page()
    try:
        signed_in(page)
        page.wait_for_selector("#task option[value='t2v-A14B']", state="attached")
        page.select_option("#task", "t2v-A14B")
        page.fill("textarea[name=prompt]", prompt)
        for name, value in fields.items():
            page.fill(f"input[name={name}]", value)
        page.set_input_files("input[name=video]", str(video))
        if extend:
            page.check("input[name=extend]")
        page.click("button[type=submit]")
        job = queued(server, prompt)
        assert job is not None, page.text_content("#form-error")
        done = server.wait(job["id"], timeout=120)
        assert done["status"] == "done", done
        signed_in(page)  # again: the gallery with the finished job
        card = page.locator(".gallery .card", has_text=prompt)
        card.wait_for()
        return done, card.inner_text()
    finally:
        page.close()


def frame_count(server, job: dict) -> int:
    with av.open(io.BytesIO(server.client.get(job["video_url"]).content)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_the_web_page_sends_a_video(browser, server, tmp_path):
    (tmp_path / "in.mp4").write_bytes(mp4_file(tmp_path, 5, seed=3))
    fields = {"steps": "2", "strength": "0.5"}
    job, card = through_the_page(browser, server, tmp_path / "in.mp4", "a browser video to video", fields)
    assert job["params"].get("has_video") is True and job["params"]["strength"] == 0.5, job
    assert "from a video" in card and "strength 0.5" in card  # the card says what the video was made from
    assert frame_count(server, job) == 5


def test_the_api_schema_lists_the_video_and_strength(server):
    body = server.client.get("/openapi.json").json()["paths"]["/api/jobs"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["video"] == {"type": "string", "format": "binary"}
    assert form["strength"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1.0}
    assert "video" not in body["application/json"]["schema"]["properties"]


def test_a_video_continued_equals_the_python_api(server, checkpoints, tmp_path):
    data = mp4_file(tmp_path, 5, seed=4)
    form = {"task": "t2v-A14B", "prompt": "a fox runs on", "steps": "2", "seed": "5", "extend": "true"}
    form |= {"window_frames": "9", "window_overlap": "4"}
    r = server.client.post("/api/jobs", data=form, files={"video": ("in.mp4", data, "video/mp4")})
    assert r.status_code == 202, r.text
    job, frames, meta = served(server, r.json())
    assert job["params"]["extend"] is True and meta["extended_video_frames"] == "5"
    (tmp_path / "same.mp4").write_bytes(data)
    pipe = WanPipeline.from_pretrained(checkpoints["t2v-A14B"])
    video = pipe("a fox runs on", steps=2, seed=5, extend=tmp_path / "same.mp4", window_frames=9, window_overlap=4)
    assert frames.shape == (9, 32, 32, 3)  # 5 given, 4 new: one window more
    np.testing.assert_array_equal(frames, mp4(video.save(tmp_path / "api.mp4").read_bytes())[0])
    long = {"video": ("in.mp4", mp4_file(tmp_path, 9, seed=4), "video/mp4")}  # 9 given + 4 new > the limit of 9
    refused = server.client.post("/api/jobs", data=form, files=long)
    assert refused.status_code == 422 and "frames 13 is over the limit of 9" in refused.json()["detail"]
    both = server.client.post("/api/jobs", data=form | {"strength": "0.5"}, files=long)
    assert both.status_code == 422 and "strength is how much of a given video to redo" in both.json()["detail"]


def test_the_web_page_continues_a_video(browser, server, tmp_path):
    (tmp_path / "in.mp4").write_bytes(mp4_file(tmp_path, 5, seed=6))
    fields = {"steps": "1", "window_frames": "9"}  # the tiny models' windows: 5 given frames, 4 new
    job, card = through_the_page(browser, server, tmp_path / "in.mp4", "a browser continuation", fields, extend=True)
    assert job["params"].get("extend") is True and job["params"]["window_frames"] == 9, job
    assert "continued" in card and frame_count(server, job) == 9
