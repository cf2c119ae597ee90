"""Live previews on the server (issue 25): a running job's event stream carries ``preview`` events (a PNG data URL
of where sampling is heading), and the page shows the picture in the queue while the job runs."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

for _name in ("httpx", "fastapi", "uvicorn", "multipart", "fastapi_offline"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx (pip install wanflow[server])")

from tests.server.test_page import open_page  # noqa: E402
from tests.server.test_server import events  # noqa: E402


def picture(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert image.format == "PNG"
    return image


def test_event_stream_carries_previews_of_a_running_job(server):
    job = {"task": "t2v-A14B", "prompt": "a previewed fox", "width": 32, "height": 32, "frames": 5, "steps": 12}
    job = server.client.post("/api/jobs", json=job).json()
    stream = events(server.client, job["id"], preview="true")
    assert stream[-1][0] == "end" and stream[-1][1]["status"] == "done"
    previews = [(i, data) for i, (name, data) in enumerate(stream) if name == "preview"]
    assert previews, [name for name, _ in stream]
    steps = [data["step"] for _, data in previews]
    assert steps == sorted(set(steps)) and all(s % 2 == 0 or s == 12 for s in steps)  # every 2nd step and the last
    assert all(picture(data["image"]).size == (32, 32) for _, data in previews)
    # each came while the job ran: the progress event before it says running
    for i, _ in previews:
        before = [data for name, data in stream[:i] if name == "progress"]
        assert before and before[-1]["status"] == "running"


def test_the_plain_event_stream_carries_no_previews(server):
    """Previews are asked for: a client that follows progress (curl, scripts) gets every event a progress event."""
    job = {"task": "t2v-A14B", "prompt": "a quiet fox", "width": 32, "height": 32, "frames": 5, "steps": 12}
    job = server.client.post("/api/jobs", json=job).json()
    stream = events(server.client, job["id"])
    assert stream[-1][0] == "end" and stream[-1][1]["status"] == "done"
    assert {name for name, _ in stream} == {"progress", "end"} and all("progress" in data for _, data in stream)


def test_the_page_shows_the_preview_while_the_job_runs(browser, slow_server):
    """On the slow server (a step takes over 2 s) the queue item shows the picture after step 2 of 3, running."""
    errors: list = []
    page = open_page(browser, slow_server, errors)
    page.fill("textarea[name=prompt]", "a fox seen early")
    page.click("button[type=submit]")
    preview = page.locator("#queue li", has_text="a fox seen early").locator("img.preview")
    preview.wait_for(state="visible", timeout=60_000)
    item = page.locator("#queue li", has_text="a fox seen early")
    assert "running" in item.text_content()
    assert preview.get_attribute("src").startswith("data:image/png;base64,")
    shown = page.wait_for_function("img => img.complete && img.naturalWidth", arg=preview.element_handle())
    assert shown.json_value() == 32
    artefacts = Path(os.environ.get("WANFLOW_TEST_ARTIFACTS", "test-artifacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artefacts / "web-page-preview.png"), full_page=True)  # kept after the run
    job = next(j for j in slow_server.client.get("/api/jobs").json() if j["params"]["prompt"] == "a fox seen early")
    assert slow_server.wait(job["id"])["status"] == "done"  # the slow server is free again for the next test
    deadline = time.monotonic() + 20
    while page.locator("#queue img.preview").count() and time.monotonic() < deadline:  # the item leaves the queue
        time.sleep(0.1)
    assert page.locator("#queue img.preview").count() == 0
    assert not errors, errors
