"""First-last frame through the server: a ``last_image`` beside the ``image`` (multipart file or base64 in JSON), the
same video as the Python API's, and the refusals (checked by the pipeline's own ``resolve``) before anything is
queued."""

from __future__ import annotations

import base64
import io
import time

import av
import numpy as np
import pytest
from PIL import Image

for _name in ("httpx", "fastapi", "uvicorn", "multipart"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx")

from tests.server.test_hardening import declared_png  # noqa: E402
from wanflow.pipelines.pipeline import WanPipeline  # noqa: E402

I2V = {"task": "i2v-A14B", "prompt": "a fox turns around", "width": 32, "height": 32, "frames": 5, "steps": 2}
SEED = 1234


def noise_png(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


FIRST, LAST = noise_png((48, 48), 0), noise_png((48, 48), 1)


def mp4(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """The decoded frames (F, H, W, 3) and the container's metadata."""
    with av.open(io.BytesIO(data)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        return frames, dict(container.metadata)


def served(server, job: dict) -> tuple[dict, np.ndarray, dict[str, str]]:
    done = server.wait(job["id"], timeout=120)
    assert done["status"] == "done", done
    return (done, *mp4(server.client.get(done["video_url"]).content))


def python_api(checkpoint, tmp_path, name: str, **images) -> np.ndarray:
    """The Python API's video on the server's checkpoint, through the same MP4 writer (same frames: same file)."""
    pipe = WanPipeline.from_pretrained(checkpoint)
    size, frames, steps = (I2V["width"], I2V["height"]), I2V["frames"], I2V["steps"]
    video = pipe(I2V["prompt"], size=size, frames=frames, steps=steps, seed=SEED, **images)
    return mp4(video.save(tmp_path / f"{name}.mp4").read_bytes())[0]


def test_first_last_frame_job_equals_the_python_api(server, checkpoints, tmp_path):
    """Multipart and JSON give the Python API's ``image=first, last_image=last`` video frame for frame (the same
    frames through the same H.264 encoder); without the last image the video differs."""
    form = {k: str(v) for k, v in (I2V | {"seed": SEED}).items()}
    files = {"image": ("first.png", FIRST, "image/png"), "last_image": ("last.png", LAST, "image/png")}
    multipart = server.client.post("/api/jobs", data=form, files=files)
    assert multipart.status_code == 202, multipart.text
    as_json = server.client.post(
        "/api/jobs", json=I2V | {"seed": SEED, "image": data_url(FIRST), "last_image": base64.b64encode(LAST).decode()}
    )
    assert as_json.status_code == 202, as_json.text  # bare base64 as well as a data URL
    first_only = server.client.post("/api/jobs", json=I2V | {"seed": SEED, "image": data_url(FIRST)})
    job, frames, meta = served(server, multipart.json())
    assert job["params"]["last_image"] is True and job["has_image"] and meta.get("last_image") == "True"
    assert (server.data / "inputs" / f"{job['id']}_last.png").is_file()
    json_job, json_frames, json_meta = served(server, as_json.json())
    assert json_job["params"]["last_image"] is True and json_meta.get("last_image") == "True"
    plain_job, plain_frames, plain_meta = served(server, first_only.json())
    assert "last_image" not in plain_job["params"] and "last_image" not in plain_meta
    images = {"image": Image.open(io.BytesIO(FIRST)), "last_image": Image.open(io.BytesIO(LAST))}
    expected = python_api(checkpoints["i2v-A14B"], tmp_path, "flf", **images)
    assert frames.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(json_frames, expected)
    np.testing.assert_array_equal(
        plain_frames, python_api(checkpoints["i2v-A14B"], tmp_path, "i2v", image=images["image"])
    )
    assert np.abs(plain_frames.astype(int) - frames.astype(int)).max() > 10  # the last image is not ignored
    assert server.client.delete(f"/api/jobs/{job['id']}").json()["deleted"] is True
    assert not (server.data / "inputs" / f"{job['id']}_last.png").exists()
    assert not (server.data / "inputs" / f"{job['id']}.png").exists()


def nothing_queued(server, before: tuple[int, list]) -> bool:
    return state(server) == before


def state(server) -> tuple[int, list]:
    return len(server.client.get("/api/jobs", params={"limit": 1000}).json()), sorted(
        p.name for p in (server.data / "inputs").iterdir()
    )


WIDE = noise_png((64, 32), 2)


@pytest.mark.parametrize(
    ("task", "images", "message"),
    [
        (
            "i2v-A14B",
            {"image": FIRST, "last_image": WIDE},
            "the last image is 64x32 (aspect 2.000) but the first is 48x48",
        ),
        ("i2v-A14B", {"last_image": LAST}, "i2v-A14B needs an image"),
        ("ti2v-5B", {"last_image": LAST}, "ti2v-5B takes no last image"),
        ("ti2v-5B", {"image": FIRST, "last_image": LAST}, "ti2v-5B takes no last image"),
        ("t2v-A14B", {"last_image": LAST}, "t2v-A14B takes no last image"),
    ],
)
@pytest.mark.parametrize("encoding", ["multipart", "json"])
def test_a_last_image_the_model_refuses_is_a_422_and_queues_nothing(server, task, images, message, encoding):
    before = state(server)
    fields = I2V | {"task": task}
    if encoding == "multipart":
        files = {k: (f"{k}.png", v, "image/png") for k, v in images.items()}
        r = server.client.post("/api/jobs", data={k: str(v) for k, v in fields.items()}, files=files)
    else:
        r = server.client.post("/api/jobs", json=fields | {k: data_url(v) for k, v in images.items()})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert nothing_queued(server, before)


def test_malformed_last_images_are_refused(server):
    before, form = state(server), {k: str(v) for k, v in I2V.items()}
    first = ("first.png", FIRST, "image/png")
    cases = [
        (
            server.client.post("/api/jobs", json=I2V | {"image": data_url(FIRST), "last_image": 5}),
            422,
            "last_image must",
        ),
        (server.client.post("/api/jobs", json=I2V | {"image": data_url(FIRST), "last_image": "@@"}), 422, "not valid"),
        (server.client.post("/api/jobs", data=form | {"last_image": "x"}, files={"image": first}), 422, "last_image"),
        (server.client.post("/api/jobs", data=form, files=[("image", first), ("image", first)]), 422, "more than one"),
        (server.client.post("/api/jobs", data=form, files={"image": first, "mask": first}), 422, "unexpected file"),
        (
            server.client.post(
                "/api/jobs", data=form, files={"image": first, "last_image": ("l.gif", LAST, "image/gif")}
            ),
            415,
            "not accepted",
        ),
    ]
    for r, status, text in cases:
        assert r.status_code == status and text in r.json()["detail"], r.text
    assert nothing_queued(server, before)


def test_an_oversized_last_image_is_a_413(server):
    """The first image's limits hold for the last: 200 000 bytes (``tests.server.launcher``), 4096x4096 pixels."""
    before, form = state(server), {k: str(v) for k, v in I2V.items()}
    big = noise_png((300, 300), 3)
    assert len(big) > 200_000
    first = ("first.png", FIRST, "image/png")
    answers = [
        server.client.post("/api/jobs", data=form, files={"image": first, "last_image": ("l.png", big, "image/png")}),
        server.client.post("/api/jobs", json=I2V | {"image": data_url(FIRST), "last_image": data_url(big)}),
        server.client.post(
            "/api/jobs",
            data=form,
            files={"image": first, "last_image": ("l.png", declared_png(5000, 5000), "image/png")},
        ),
    ]
    assert [r.status_code for r in answers] == [413] * 3, [r.text for r in answers]
    assert "over the limit of 200000 bytes" in answers[0].json()["detail"]
    assert "over the limit of 200000 bytes" in answers[1].json()["detail"]
    assert "pixels" in answers[2].json()["detail"]
    assert nothing_queued(server, before)


def test_the_web_page_sends_a_last_frame(browser, server, tmp_path):
    """The page shows the "last frame" input for i2v-A14B only and sends it: the job it queues has a last image."""
    from tests.server.conftest import TOKEN

    (tmp_path / "first.png").write_bytes(FIRST)
    (tmp_path / "last.png").write_bytes(LAST)
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.fill("#token", TOKEN)
        page.locator("#token").blur()  # the browser's own change event (a later blur would load the tasks again)
        page.wait_for_selector("#task option[value='i2v-A14B']", state="attached")
        for task, shown in (("t2v-A14B", False), ("ti2v-5B", False), ("i2v-A14B", True)):
            page.select_option("#task", task)
            assert page.is_visible("#last-image-row") is shown, task
        page.fill("textarea[name=prompt]", "a browser first-last frame")
        for name, value in {"width": "32", "height": "32", "frames": "5", "steps": "1"}.items():
            page.fill(f"input[name={name}]", value)
        page.set_input_files("input[name=image]", str(tmp_path / "first.png"))
        page.set_input_files("input[name=last_image]", str(tmp_path / "last.png"))
        assert page.input_value("#task") == "i2v-A14B"
        page.click("button[type=submit]")
        job = queued(server, "a browser first-last frame")
        assert job is not None, page.text_content("#form-error")
    finally:
        page.close()
    assert job["task"] == "i2v-A14B" and job["params"].get("last_image") is True and job["has_image"], job
    assert server.wait(job["id"], timeout=120)["status"] == "done"


def queued(server, prompt: str, timeout: float = 20) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [j for j in server.client.get("/api/jobs").json() if j["params"]["prompt"] == prompt]
        if jobs:
            return jobs[0]
        time.sleep(0.1)
    return None
