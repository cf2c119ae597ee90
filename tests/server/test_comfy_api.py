"""ComfyUI's server API (``server.comfy_api``): a client written for ComfyUI's API, as its websocket script example
runs one, queues a Wan 2.2 workflow, hears its progress node by node, reads the history and downloads the video; the
job is the one the workflow's fields make through the native API; what would not run as ComfyUI runs it is refused in
ComfyUI's error shape."""

from __future__ import annotations

import io
import json
import os
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.cli.test_workflow import api, node, relink, t2v
from tests.server.conftest import TOKEN, Server
from tests.server.test_workflow import FIELDS, workflow
from tests.tiny.checkpoint import TINY_DITS
from tests.tiny.lora import make_lora

websockets = pytest.importorskip("websockets.sync.client")


@pytest.fixture(scope="module")
def served(tmp_path_factory, checkpoints):
    """Every denoising step takes at least 0.4 s, so that each step's progress is seen (the websocket looks every
    0.25 s)."""
    folder = tmp_path_factory.mktemp("loras")
    save_file(make_lora("kohya", TINY_DITS["t2v-A14B"])[0], folder / "style.safetensors")
    ckpts = {task: checkpoints[task] for task in ("t2v-A14B", "i2v-A14B")}
    srv = Server(tmp_path_factory.mktemp("data"), ckpts, lora_dir=folder, step_delay=0.4, access_log=1).start()
    yield srv
    srv.stop()


def saved(w):
    """The workflow with ComfyUI's SaveVideo after its CreateVideo node, in the API format."""
    w.add(61, "SaveVideo", ["video/ComfyUI", "auto", "auto"], video=(60, 0))
    return api(w)


def t2v_prompt():
    """tests/server/test_workflow.py's T2V workflow with its LoRA this server lacks taken off the low-noise expert (the
    node left in the graph, unused), saved."""
    w = workflow()
    relink(w, 55, "model", 56)
    return saved(w)


def connect(srv: Server, client: str, **headers):
    url = srv.url.replace("http", "ws") + f"/ws?clientId={client}"
    return websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}", **headers}, open_timeout=10)


def messages_until_done(ws, *prompt_ids: str, timeout: float = 90) -> list[dict]:
    """What the websocket says until ComfyUI's end of each prompt: ``executing`` with node null for it."""
    out, open_, deadline = [], set(prompt_ids), time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        raw = ws.recv(timeout=deadline - time.monotonic())
        message = {"type": "binary", "data": {"bytes": raw}} if isinstance(raw, bytes) else json.loads(raw)
        out.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None:
            open_.discard(data.get("prompt_id"))
    if open_:
        raise TimeoutError(out)
    return out


def test_a_comfyui_client_runs_a_workflow(served):
    client = uuid.uuid4().hex
    prompt = t2v_prompt()
    with connect(served, client) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client}}
        r = served.client.post("/prompt", json={"prompt": prompt, "client_id": client})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        assert r.json()["node_errors"] == {} and isinstance(r.json()["number"], int)
        said = messages_until_done(ws, prompt_id)
    previews = [m["data"]["bytes"] for m in said if m["type"] == "binary"]
    said = [m for m in said if m["type"] != "binary"]
    kinds = [m["type"] for m in said]
    assert kinds[:2] == ["execution_start", "execution_cached"] and kinds[-1] == "executing"
    assert all(m["data"]["prompt_id"] == prompt_id for m in said)
    # the live previews, as ComfyUI sends them: event 1 (a preview image), format 2 (PNG), the image (what the
    # websocket example decodes from out[8:])
    assert len(previews) >= 2 and all(p[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" for p in previews)
    assert all(Image.open(io.BytesIO(p[8:])).format == "PNG" for p in previews)
    # the nodes ComfyUI would run, in order: the text, each expert's sampler counting its share of the steps (the
    # switch at step 2 of 4), the decoder, the save node; the progress of each sampler, step by step
    running = [m["data"]["node"] for m in said if m["type"] == "executing"]
    assert [n for n in running if n not in ("6", "8")] == ["57", "58", "61", None]  # (text and decode are short:
    assert running in ([*a, "57", "58", *b, "61", None] for a in ([], ["6"]) for b in ([], ["8"]))  # seen or not)
    progress = [(m["data"]["node"], m["data"]["value"], m["data"]["max"]) for m in said if m["type"] == "progress"]
    assert progress == [("57", 1, 2), ("57", 2, 2), ("58", 1, 2), ("58", 2, 2)]
    executed = next(m["data"] for m in said if m["type"] == "executed")
    job_id = uuid.UUID(prompt_id).hex
    video = {"filename": f"{job_id}.mp4", "subfolder": "", "type": "output"}
    assert executed == {"node": "61", "display_node": "61", "output": {"images": [video], "animated": [True]},
                        "prompt_id": prompt_id}  # fmt: skip
    assert kinds[-2] == "execution_success"
    # the job is the workflow's, through the native API as well
    job = served.client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "done" and {k: job["params"].get(k) for k in FIELDS} == FIELDS
    history = served.client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert history["outputs"] == {"61": {"images": [video], "animated": [True]}}
    assert history["status"]["status_str"] == "success" and history["status"]["completed"]
    assert [kind for kind, _ in history["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"
    ]  # fmt: skip
    assert history["prompt"][1:3] == [prompt_id, prompt] and history["prompt"][4] == ["61"]
    assert prompt_id in served.client.get("/history").json()
    got = served.client.get("/view", params=video)
    assert got.status_code == 200 and got.content == served.client.get(f"/api/jobs/{job_id}/video").content
    assert served.client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert served.client.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def i2v_prompt(image: str):
    """ComfyUI's I2V layout: WanImageToVideo between the prompts and the samplers, its start image a LoadImage."""
    w = t2v()
    w.add(80, "LoadImage", [image, "image"])
    w.add(81, "WanImageToVideo", [64, 48, 5, 1], positive=(6, 0), negative=(7, 0), vae=(39, 0),
          start_image=(80, 0))  # fmt: skip
    for sampler in (57, 58):
        relink(w, sampler, "positive", 81)
        entry = next(i for i in node(w, sampler)["inputs"] if i["name"] == "negative")
        next(lk for lk in w.links if lk[0] == entry["link"])[1:3] = [81, 1]
    relink(w, 57, "latent_image", 81)
    next(lk for lk in w.links if lk[3] == 57 and lk[1] == 81 and lk[4] == 3)[2] = 2  # (its LATENT output)
    return saved(w)


def test_an_uploaded_image_starts_an_image_to_video_prompt(served):
    first, other = _png(1), _png(2)
    up = served.client.post("/upload/image", files={"image": ("first.png", first, "image/png")})
    assert up.status_code == 200 and up.json() == {"name": "first.png", "subfolder": "", "type": "input"}
    again = served.client.post("/upload/image", files={"image": ("first.png", other, "image/png")})
    assert again.json()["name"] == "first (1).png"  # (ComfyUI's name for an upload that would overwrite)
    kept = served.client.post("/upload/image", files={"image": ("first.png", first, "image/png")},
                              data={"overwrite": "true"})  # fmt: skip
    assert kept.json()["name"] == "first.png"
    assert served.client.get("/view", params={"filename": "first (1).png", "type": "input"}).content == other
    for bad in (
        {"filename": "../first.png", "type": "input"},
        {"filename": "x.png", "subfolder": "..", "type": "input"},
    ):
        assert served.client.get("/view", params=bad).status_code == 400
    r = served.client.post("/prompt", json={"prompt": i2v_prompt("first (1).png")})
    assert r.status_code == 200, r.text
    job_id = uuid.UUID(r.json()["prompt_id"]).hex
    job = served.wait(job_id)
    assert job["status"] == "done" and job["task"] == "i2v-A14B" and job["has_image"]
    stored = np.asarray(Image.open(served.data / "inputs" / f"{job_id}.png").convert("RGB"))
    assert np.array_equal(stored, np.asarray(Image.open(io.BytesIO(other)).convert("RGB")))  # (that upload's pixels)
    missing = served.client.post("/prompt", json={"prompt": i2v_prompt("never.png")})
    assert missing.status_code == 400 and "never.png is not uploaded" in missing.json()["error"]["details"]


def test_a_video_size_that_follows_the_uploaded_image(served):
    """KJNodes' ImageResizeKJv2 before WanImageToVideo, its size outputs the video's size: worked out from the
    uploaded image's size (64x48 resized within 32x32 is 32x24, cut to multiples of 16: 32x16), the resize carried
    as the job's image_scale; the job runs."""
    served.client.post("/upload/image", files={"image": ("kj.png", _png(3), "image/png")})
    prompt = i2v_prompt("kj.png")
    prompt["84"] = {"class_type": "ImageResizeKJv2", "inputs": {
        "width": 32, "height": 32, "upscale_method": "bilinear", "keep_proportion": "resize", "pad_color": "0, 0, 0",
        "crop_position": "center", "divisible_by": 16, "device": "cpu", "image": ["80", 0]}}  # fmt: skip
    prompt["81"]["inputs"] |= {"start_image": ["84", 0], "width": ["84", 1], "height": ["84", 2]}
    r = served.client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    job = served.wait(uuid.UUID(r.json()["prompt_id"]).hex)
    assert job["status"] == "done", job
    params = job["params"]
    assert (params["width"], params["height"], params["image_scale"]) == (32, 16, "bilinear:32*32:resize:center:16")
    prompt["80"]["inputs"]["image"] = "never.png"
    missing = served.client.post("/prompt", json={"prompt": prompt})
    assert missing.status_code == 400 and "never.png is not uploaded" in missing.json()["error"]["details"]


def _change(prompt: dict, node_id: str, **inputs) -> dict:
    prompt = json.loads(json.dumps(prompt))
    prompt[node_id]["inputs"].update(inputs)
    return prompt


def test_what_would_not_run_as_in_comfyui_is_refused(served):
    good = t2v_prompt()
    relinked = _change(good, "55", model=["91", 0])  # (the LoRA this server lacks, on the low-noise expert again)
    no_output = {k: v for k, v in good.items() if k != "61"}
    ddpm = _change(good, "57", sampler_name="ddpm")
    ddpm = _change(ddpm, "58", sampler_name="ddpm")
    rife = _change(good, "60", images=["62", 0]) | {"62": {"class_type": "RIFE VFI", "inputs": {"frames": ["8", 0]}}}
    cases = [
        ({"prompt": rife}, "invalid_prompt", "node 62 (RIFE VFI) works on the decoded frames"),
        ({"prompt": relinked}, "value_not_in_list", "absent"),
        ({"prompt": no_output}, "prompt_no_outputs", "SaveVideo"),
        ({"prompt": ddpm}, "invalid_prompt", "'ddpm'"),
        ({"prompt": workflow().json()}, "invalid_prompt", "API-format"),
        ({"client_id": "x"}, "no_prompt", "No prompt"),
        ({"prompt": good, "prompt_id": "not-a-uuid"}, "invalid_prompt", "not a UUID"),
    ]
    for body, kind, words in cases:
        r = served.client.post("/prompt", json=body)
        assert r.status_code == 400, (body.keys(), r.text)
        error = r.json()["error"]
        assert error["type"] == kind and words in error["message"] + error["details"], error
        assert r.json()["node_errors"] == {}
    given = str(uuid.uuid4())
    assert served.client.post("/prompt", json={"prompt": good, "prompt_id": given}).json()["prompt_id"] == given
    again = served.client.post("/prompt", json={"prompt": good, "prompt_id": given})
    assert again.status_code == 400 and "in use" in again.json()["error"]["message"]
    served.wait(uuid.UUID(given).hex)


def test_interrupt_and_delete(served):
    client = uuid.uuid4().hex
    with connect(served, client) as ws:
        json.loads(ws.recv(timeout=10))
        running = served.client.post("/prompt", json={"prompt": t2v_prompt(), "client_id": client}).json()["prompt_id"]
        waiting = served.client.post("/prompt", json={"prompt": t2v_prompt(), "client_id": client}).json()["prompt_id"]
        served.wait(uuid.UUID(running).hex, ("running",))
        queue = served.client.get("/queue").json()
        assert [e[1] for e in queue["queue_running"]] == [running] and [e[1] for e in queue["queue_pending"]] == [
            waiting
        ]  # fmt: skip
        assert served.client.post("/queue", json={"delete": [waiting]}).status_code == 200
        assert served.client.post("/interrupt", json={"prompt_id": running}).status_code == 200
        said = messages_until_done(ws, running, waiting)
        of_running = [m for m in said if m["data"].get("prompt_id") == running]
        assert of_running[-2]["type"] == "execution_interrupted"
        assert of_running[-2]["data"]["node_id"] in ("6", "57", "58")
        of_waiting = [m["type"] for m in said if m["data"].get("prompt_id") == waiting]
        assert of_waiting == ["execution_interrupted", "executing"]  # (never started)
    for prompt_id in (running, waiting):
        assert served.wait(uuid.UUID(prompt_id).hex)["status"] == "cancelled"
        status = served.client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]
        assert status["status_str"] == "error" and not status["completed"]
    assert served.client.post("/history", json={"delete": [running]}).status_code == 200
    assert served.client.get(f"/history/{running}").json() == {}
    assert served.client.get(f"/api/jobs/{uuid.UUID(running).hex}").status_code == 200  # (the job stays)


def test_the_websocket_is_guarded(served):
    with pytest.raises(Exception, match=r"1008|403|rejected"):
        with connect(served, "a", Origin="http://elsewhere.example") as ws:
            ws.recv(timeout=5)
    url = served.url.replace("http", "ws") + "/ws?clientId=b"
    with pytest.raises(Exception, match=r"1008|403|rejected"):
        with websockets.connect(url, open_timeout=10) as ws:  # (no token)
            ws.recv(timeout=5)
    assert served.client.post("/prompt", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    with websockets.connect(url + f"&access_token={TOKEN}", open_timeout=10) as ws:  # (the token in the URL)
        assert json.loads(ws.recv(timeout=10))["data"]["sid"] == "b"
    log = (served.data / "server.log").read_text()
    assert '"WebSocket /ws?clientId=b&access_token=[redacted]" [accepted]' in log and TOKEN not in log


def test_a_client_that_connects_again_is_told_on_its_new_socket(served):
    from websockets.exceptions import ConnectionClosed

    with connect(served, "c") as first:
        json.loads(first.recv(timeout=10))
        with connect(served, "c") as second:
            json.loads(second.recv(timeout=10))
            with pytest.raises(ConnectionClosed):
                first.recv(timeout=5)
            prompt_id = served.client.post("/prompt", json={"prompt": t2v_prompt(), "client_id": "c"}).json()
            said = messages_until_done(second, prompt_id["prompt_id"])
            assert said[-1]["data"] == {"node": None, "display_node": None, "prompt_id": prompt_id["prompt_id"]}


def test_bad_requests_change_nothing(served):
    running = served.client.post("/prompt", json={"prompt": t2v_prompt()}).json()["prompt_id"]
    job_id = uuid.UUID(running).hex
    served.wait(job_id, ("running",))
    for path, body in [
        ("/interrupt", {"prompt_id": 5}),  # (not a prompt id: no prompt, not every prompt)
        ("/interrupt", {"prompt_id": "not-a-uuid"}),
        ("/queue", {"delete": "abc"}),
        ("/queue", {"delete": 5, "clear": "yes"}),
        ("/history", {"delete": {"a": 1}}),
    ]:
        assert served.client.post(path, json=body).status_code == 200
    assert served.client.post("/queue", content=b"not json").status_code == 200
    assert served.client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    for body, kind in [
        (b"[]", "no_prompt"),
        (b"not json", "invalid_prompt"),
        (json.dumps({"prompt": {"1": "x"}}).encode(), "invalid_prompt"),
        (json.dumps({"prompt": {"1": {"class_type": "KSampler", "inputs": {}}}}).encode(), "invalid_prompt"),
        (json.dumps({"prompt": t2v_prompt(), "prompt_id": 7}).encode(), "invalid_prompt"),
    ]:
        r = served.client.post("/prompt", content=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == kind, r.text
    text = served.client.post("/upload/image", files={"image": ("a.png", b"not an image", "image/png")})
    assert text.status_code == 422
    away = served.client.post(
        "/upload/image", files={"image": ("b.png", _png(3), "image/png")}, data={"subfolder": "../a"}
    )
    assert away.status_code == 400
    assert served.client.get("/view", params={"filename": f"{uuid.uuid4().hex}.mp4"}).status_code == 404
    assert served.client.get("/view", params={"filename": f"{job_id}.mp4", "type": "temp"}).status_code == 404
    assert served.client.get("/history/not-a-uuid").json() == {}
    assert served.client.post("/interrupt", json={"prompt_id": running}).status_code == 200
    assert served.wait(job_id)["status"] == "cancelled"


def test_system_stats(served):
    """ComfyUI's ``/system_stats``, which its clients ask to see the server is up: its shape, this machine's memory
    (the page size times the pages), and, with no GPU here, the CPU as the device; behind the token like the rest."""
    stats = served.client.get("/system_stats").json()
    system, (device,) = stats["system"], stats["devices"]
    assert system["ram_total"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > 2**30
    assert 0 < system["ram_free"] <= system["ram_total"] and system["comfyui_version"].startswith("wanflow ")
    assert system["pytorch_version"] == torch.__version__ and {"python_version", "argv", "os"} <= set(system)
    assert device["type"] == "cpu" and device["index"] is None and device["vram_total"] > 0
    assert set(device) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"}
    assert served.client.get("/system_stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
