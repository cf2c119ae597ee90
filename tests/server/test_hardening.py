"""Issue 21, the server half: other web pages kept out, the event loop kept free, the token kept out of URLs and logs,
clear answers to hostile input, limits per model, prompt cancels, and the built-in models served with no setup."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import struct
import subprocess
import sys
import threading
import time
import zlib

import av
import pytest
from PIL import Image

for _name in ("httpx", "fastapi", "uvicorn", "multipart", "fastapi_offline"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx (pip install wanflow[server])")

import httpx  # noqa: E402
import torch  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from torch import nn  # noqa: E402

from tests.server.conftest import ROOT, TOKEN, free_port  # noqa: E402
from wanflow.sampling.hooks import Step  # noqa: E402
from wanflow.server.cli import add_arguments, builtin_models, check_exposure  # noqa: E402
from wanflow.server.guard import Guard, Hosts  # noqa: E402
from wanflow.server.jobs import BlockCheck  # noqa: E402
from wanflow.server.schemas import Limits  # noqa: E402
from wanflow.tasks import TASKS  # noqa: E402

T2V = {"task": "t2v-A14B", "prompt": "a red fox in the snow", "width": 32, "height": 32, "frames": 5, "steps": 2}
FORM = {k: str(v) for k, v in T2V.items()}


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says ``width`` x ``height`` (what a decompression bomb looks like to a server)."""
    data = bytearray(png((1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def job_count(server) -> int:
    return len(server.client.get("/api/jobs").json())


# --- 1. Host and Origin ---


def test_a_foreign_host_is_refused(server):
    """DNS rebinding: a page of rebind.evil.example whose name now resolves to 127.0.0.1 reads nothing."""
    for path in ("/api/jobs", "/health", "/"):
        r = server.client.get(path, headers={"Host": f"rebind.evil.example:{server.port}"})
        assert r.status_code == 421 and "--allowed_hosts rebind.evil.example" in r.json()["detail"], r.text
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "[::1]"):
        assert server.client.get("/api/jobs", headers={"Host": host}).status_code == 200


def test_a_cross_origin_request_is_refused(server):
    """A form POST from another site's page queues nothing, nor cancels or deletes; the server's own page and
    programs (no Origin) still do."""
    before = job_count(server)
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port}"):
        r = server.client.post("/api/jobs", data=FORM, headers={"Origin": origin})
        assert r.status_code == 403 and "refused" in r.json()["detail"], r.text
    r = server.client.post("/api/jobs", json=T2V, headers={"Sec-Fetch-Site": "cross-site"})  # a browser, no Origin
    assert r.status_code == 403
    assert job_count(server) == before
    own = server.client.post("/api/jobs", data=FORM, headers={"Origin": server.url})
    program = server.client.post("/api/jobs", json=T2V)
    assert own.status_code == 202 and program.status_code == 202
    job_id = own.json()["id"]
    evil = {"Origin": "http://evil.example"}
    assert server.client.post(f"/api/jobs/{job_id}/cancel", headers=evil).status_code == 403
    assert server.client.delete(f"/api/jobs/{job_id}", headers=evil).status_code == 403
    for job in (own.json(), program.json()):
        assert server.wait(job["id"])["status"] == "done"
    assert server.client.delete(f"/api/jobs/{job_id}", headers={"Origin": server.url}).status_code == 200


def test_allowed_hosts():
    local = Hosts.for_bind("127.0.0.1")
    assert all(local.allows(name) for name in ("127.0.0.1", "localhost", "::1"))
    assert not local.allows("rebind.evil.example") and not local.allows("192.168.1.5")
    every = Hosts.for_bind("0.0.0.0", ["GPUbox.lan"])
    assert every.allows("192.168.1.5") and every.allows("gpubox.lan") and not every.allows("evil.example")
    assert Hosts.for_bind("127.0.0.1", ["*"]).allows("anything.example")
    proxied = Guard(None, Hosts.for_bind("127.0.0.1", ["videos.example.com"]))
    post = {"host": "127.0.0.1:8000", "origin": "https://videos.example.com"}  # a proxy that rewrites Host
    assert proxied.refusal(Headers(post), "POST") is None
    assert proxied.refusal(Headers(post | {"origin": "https://evil.example"}), "POST")[0] == 403
    assert Guard(None, local).refusal(Headers(post), "POST")[0] == 403
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--allowed_hosts", "a.lan", "b.lan"])
    assert args.ckpt_dir is None and args.allowed_hosts == ["a.lan", "b.lan"]


# --- 2. Decoding off the event loop ---


def test_health_answers_while_large_images_decode(server):
    """Six uploads of a 4096x4096 PNG (a small file, 48 MB of pixels) decode in worker threads, two at a time."""
    big = png((4096, 4096))
    assert len(big) < 100_000
    answers = []

    def upload() -> None:
        files = {"image": ("big.png", big, "image/png")}
        r = httpx.post(f"{server.url}/api/jobs", data=FORM, files=files, headers=server.client.headers, timeout=60)
        answers.append((r.status_code, r.json()["detail"]))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    latencies = []
    with httpx.Client(base_url=server.url) as health:
        while any(t.is_alive() for t in threads):
            start = time.monotonic()
            assert health.get("/health").status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.02)
    assert answers == [(422, "t2v-A14B takes no image; use an i2v or ti2v model for image-to-video")] * 6
    assert len(latencies) >= 3, latencies  # the decodes took a while: /health was asked while they ran
    assert max(latencies) < 0.2, latencies


# --- 3. The token ---


def test_query_token_only_where_a_browser_needs_it(server):
    job = server.wait(server.client.post("/api/jobs", json=T2V).json()["id"])
    query = {"access_token": TOKEN}
    for method, path in [
        ("GET", "/api/jobs"),
        ("GET", f"/api/jobs/{job['id']}"),
        ("POST", "/api/jobs"),
        ("POST", f"/api/jobs/{job['id']}/cancel"),
        ("DELETE", f"/api/jobs/{job['id']}"),
        ("GET", "/v1/videos"),
        ("GET", "/metrics"),
    ]:
        assert httpx.request(method, server.url + path, params=query).status_code == 401, path
    for path in (f"/api/jobs/{job['id']}/video", f"/v1/videos/{job['id']}/content"):
        assert httpx.get(server.url + path, params=query).status_code == 200
        assert httpx.get(server.url + path, params={"access_token": "wrong"}).status_code == 401
    with httpx.stream("GET", f"{server.url}/api/jobs/{job['id']}/events", params=query) as r:
        assert r.status_code == 200


def test_the_token_is_never_logged_and_polls_are_quiet(server):
    job = server.wait(server.client.post("/api/jobs", json=T2V | {"prompt": "logged"}).json()["id"])
    assert httpx.get(f"{server.url}/api/jobs/{job['id']}/video", params={"access_token": TOKEN}).status_code == 200
    for _ in range(3):
        server.client.get("/api/jobs")
        server.client.get(f"/api/jobs/{job['id']}")
        server.client.get("/health")
    log = (server.data / "server.log").read_text()
    assert '"POST /api/jobs HTTP/1.1" 202' in log  # the access log is on
    assert f"/api/jobs/{job['id']}/video?access_token=[redacted]" in log
    assert TOKEN not in log
    assert '"GET /api/jobs HTTP/1.1" 200' not in log and '"GET /health HTTP/1.1" 200' not in log
    assert f'"GET /api/jobs/{job["id"]} HTTP/1.1" 200' not in log


def test_a_blank_token_is_refused():
    for token in (" ", "", "\t "):
        with pytest.raises(ValueError, match="blank"):
            check_exposure("127.0.0.1", token)
    with pytest.raises(ValueError, match="ends"):
        check_exposure("0.0.0.0", " secret")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "wanflow", "serve", "--token", " "]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("wanflow: error: --token is blank"), r.stderr


# --- 4. Hostile input ---


def test_deeply_nested_json_is_a_400(server):
    for body in (b"[" * 100_000, b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        r = server.client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["detail"], r.text


@pytest.mark.parametrize("size", [(20000, 20000), (5000, 5000)])
def test_an_image_of_too_many_pixels_is_a_413(server, size):
    """20000x20000 trips Pillow's own bomb check before the server's; both answer 413 with the server's limit."""
    files = {"image": ("bomb.png", declared_png(*size), "image/png")}
    r = server.client.post("/api/jobs", data=FORM | {"task": "ti2v-5B"}, files=files)
    assert r.status_code == 413 and f"over the limit of {4096 * 4096} pixels" in r.json()["detail"], r.text


# --- 5. Limits per model ---


def test_limits_follow_what_the_model_was_trained_at():
    builtin = TASKS["t2v-A14B"].with_overrides({"size": [64, 64], "sizes": [[64, 64]], "frames": 9})
    assert Limits().for_task(builtin) == dataclasses.replace(
        Limits(), max_side=128, max_pixels=128 * 128, max_frames=17
    )
    for task in TASKS.values():  # the published models: the server's limits
        assert Limits().for_task(task) == Limits()
    assert Limits().for_task(None) == Limits()


def test_a_small_model_has_small_limits(slow_server):
    """The model says (wanflow.json) it was trained at 32x32 and 5 frames: 64x64 and 9 frames at most, checked
    before the model is even loaded."""
    c = slow_server.client
    limits = c.get("/api/tasks").json()["tasks"]["t2v-A14B"]["limits"]
    assert (limits["max_side"], limits["max_pixels"], limits["max_frames"]) == (64, 64 * 64, 9)
    for change, message in [
        ({"width": 128, "height": 128}, "size 128x128 is over the limit (64 pixels a side, 4096 in all)"),
        ({"width": 64, "height": 96}, "size 64x96 is over the limit"),
        ({"frames": 13}, "frames 13 is over the limit of 9"),
    ]:
        r = c.post("/api/jobs", json={"prompt": "a fox"} | change)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
        assert "trained at 32x32 and 5 frames" in r.json()["detail"]


# --- 6. Cancel ---


def test_cancel_stops_a_running_job_within_a_block(slow_server):
    """A step takes over 2 s (8 blocks of 0.25 s); a cancel just after it starts ends the job within a block."""
    c = slow_server.client
    job = c.post("/api/jobs", json={"prompt": "a slow fox"}).json()  # no task: this server runs one
    deadline = time.monotonic() + 60
    while job["stage"] != "denoise" and time.monotonic() < deadline:
        time.sleep(0.02)
        job = c.get(f"/api/jobs/{job['id']}").json()
    assert job["stage"] == "denoise" and job["step"] == 0
    start = time.monotonic()
    assert c.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    done = slow_server.wait(job["id"])
    took = time.monotonic() - start
    assert done["status"] == "cancelled" and done["step"] == 0, done  # the first step never finished
    assert took < 1.0, took


class Blocks(nn.Module):
    def __init__(self, log: list, name: str):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(3))
        for i, block in enumerate(self.blocks):
            block.register_forward_hook(lambda *_, i=i: log.append(f"{name}{i}"))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_block_check_runs_before_every_block_of_the_current_expert():
    log = []
    high, low = Blocks(log, "high"), Blocks(log, "low")
    check = BlockCheck(lambda: log.append("check"))
    step = Step(0, 2, 999, "high_noise", 4.0)
    check.before(step, high)
    check.before(step, high)  # the same expert again: no second set of checks
    high(torch.zeros(1))
    assert log == ["check", "high0", "check", "high1", "check", "high2"]
    log.clear()
    check.before(step, low)  # the expert switch moves the checks
    high(torch.zeros(1))
    low(torch.zeros(1))
    assert log == ["high0", "high1", "high2", "check", "low0", "check", "low1", "check", "low2"]
    log.clear()
    check.end()
    low(torch.zeros(1))
    assert log == ["low0", "low1", "low2"]


# --- 7. The built-in models, and the task ---


def test_the_task_may_be_left_out_only_on_a_server_of_one(server):
    r = server.client.post("/api/jobs", json={"prompt": "a fox", "frames": 6, "colour": "red"})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "task: Field required (this server runs t2v-A14B, i2v-A14B, ti2v-5B)" in detail
    assert "4n+1" in detail and "colour" in detail  # the other errors too


def test_builtin_models_are_declared_before_they_load():
    loaders, tasks = builtin_models(None, {})
    assert list(loaders) == list(tasks) == ["t2v-A14B", "i2v-A14B", "ti2v-5B"]
    assert all((task.sizes, task.frames) == (((64, 64),), 9) for task in tasks.values())
    loaders, tasks = builtin_models("ti2v-5B", {})  # --task: that one only
    assert list(loaders) == ["ti2v-5B"] and tasks["ti2v-5B"].fps == 8


def test_serve_without_ckpt_dir_runs_the_builtin_models(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "wanflow", "serve", "--port", str(port), "--data", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        _wait_for_health(c, process, tmp_path / "serve.log")
        assert c.get("/health").json()["tasks"] == ["t2v-A14B", "i2v-A14B", "ti2v-5B"]
        tasks = c.get("/api/tasks").json()["tasks"]
        for spec in tasks.values():
            assert (spec["sizes"], spec["frames"], spec["limits"]["max_side"]) == ([[64, 64]], 9, 128)
        big = c.post("/api/jobs", json={"task": "t2v-A14B", "prompt": "x", "width": 1280, "height": 704, "frames": 121})
        assert big.status_code == 422 and "trained at 64x64 and 9 frames" in big.json()["detail"], big.text
        prompt = "a red circle moving right on a black background"
        job = c.post("/api/jobs", json={"task": "t2v-A14B", "prompt": prompt, "steps": 2}).json()
        deadline = time.monotonic() + 120
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = c.get(f"/api/jobs/{job['id']}").json()
        assert job["status"] == "done", job  # the built-in model was loaded on this first job
        with av.open(io.BytesIO(c.get(job["video_url"]).content)) as video:
            frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
        assert len(frames) == 9 and frames[0].shape == (64, 64, 3)  # the built-in's own size and length
    finally:
        process.terminate()
        process.wait(20)


def _wait_for_health(c: httpx.Client, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if c.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start within 120 s")


def test_switch_step_reaches_the_pipeline_options():
    from wanflow.server.schemas import GenerateRequest

    assert GenerateRequest(prompt="x", switch_step=2).options().switch_step == 2
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        GenerateRequest(prompt="x", switch_step=-1)
