"""``POST /api/workflow`` and the page's workflow input: a ComfyUI workflow read into this server's job fields (its
LoRAs by this server's names, what cannot carry over said in notes); the page fills its form with them, and the job
it sends is the job of those fields."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from tests.cli.test_workflow import api, node, t2v
from tests.server.conftest import Server
from tests.tiny.checkpoint import TINY_DITS
from tests.tiny.lora import make_lora


@pytest.fixture(scope="module")
def served(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("loras")
    save_file(make_lora("kohya", TINY_DITS["t2v-A14B"])[0], folder / "style.safetensors")
    srv = Server(tmp_path_factory.mktemp("data"), {"t2v-A14B": checkpoints["t2v-A14B"]}, lora_dir=folder).start()
    yield srv
    srv.stop()


def workflow():
    """ComfyUI's T2V template layout (tests/cli/test_workflow.py) with a LoRA this server has on the high-noise
    expert and one it lacks on the low-noise one."""
    w = t2v()
    w.add(90, "LoraLoaderModelOnly", ["style.safetensors", 0.5], model=(37, 0))
    w.add(91, "LoraLoaderModelOnly", ["loras\\absent.safetensors", 1.0], model=(56, 0))
    for sampling, lora in ((54, 90), (55, 91)):
        entry = node(w, sampling)["inputs"][0]
        next(lk for lk in w.links if lk[0] == entry["link"])[1] = lora
    return w


FIELDS = {
    "task": "t2v-A14B", "prompt": "a red circle moving right", "negative_prompt": "blurry, static", "width": 64,
    "height": 48, "frames": 5, "steps": 4, "shift": 8.0, "guide_scale": [3.0, 3.5], "solver": "euler",
    "scheduler": "simple", "seed": "3", "switch_step": 2, "noise_device": "cpu", "fps": 16, "loras": [{"name": "style",
    "strength": 0.5, "expert": "high"}],
}  # fmt: skip


def test_a_workflow_becomes_job_fields(served):
    r = served.client.post("/api/workflow", content=json.dumps(workflow().json()))
    assert r.status_code == 200, r.text
    read = r.json()
    assert read["task"] == "t2v-A14B" and read["fields"] == FIELDS
    assert "LoRA absent is not in this server's LoRA folder: left out" in read["notes"]
    assert "this server runs its own t2v-A14B model, not the workflow's files" in read["notes"]
    faster = workflow()
    node(faster, 60)["widgets_values"][0] = 24  # (CreateVideo's frame rate)
    assert served.client.post("/api/workflow", content=json.dumps(faster.json())).json()["fields"]["fps"] == 24
    api_export = served.client.post("/api/workflow?name=w.json", content=json.dumps(api(workflow())))
    assert api_export.json()["fields"] == FIELDS
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow().json()))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG", pnginfo=info)
    assert served.client.post("/api/workflow?name=still.png", content=png.getvalue()).json()["fields"] == FIELDS
    job = served.client.post("/api/jobs", json=FIELDS)
    assert job.status_code == 202 and served.wait(job.json()["id"])["status"] == "done"


@pytest.mark.parametrize(
    ("body", "name", "status", "message"),
    [
        (b"{not json", "w.json", 422, "not a JSON file"),
        (b"{}", "w.json", 422, "not a ComfyUI workflow"),
        (b"{}", "w.exe", 422, "a workflow is a .json"),
        (b"\x89PNG\r\n", "w.png", 422, "cannot read its metadata"),
    ],
)
def test_what_is_not_a_workflow_is_a_clear_error(served, body, name, status, message):
    r = served.client.post(f"/api/workflow?name={name}", content=body)
    assert r.status_code == status and message in r.json()["detail"], r.text


def broken(kind: str) -> dict:
    """Workflows that are JSON and look like ComfyUI's, but are not runnable graphs."""
    w = t2v()
    if kind == "steps of the wrong kind":
        node(w, 57)["widgets_values"][3] = {"a": 1}
        return w.json()
    if kind == "a node without its type":
        del node(w, 39)["type"]
        return w.json()
    if kind == "a loop of samplers":
        entry = node(w, 57)["inputs"][3]  # the high-noise sampler's latent from the low-noise one
        next(lk for lk in w.links if lk[0] == entry["link"])[1] = 58
        return w.json()
    if kind == "a loop of switches":
        w.add(93, "ComfySwitchNode", [True], on_true=(94, 0)).add(94, "ComfySwitchNode", [True], on_true=(93, 0))
        entry = node(w, 54)["inputs"][0]
        next(lk for lk in w.links if lk[0] == entry["link"])[1] = 93
        return w.json()
    if kind == "a subgraph inside itself":
        inner = {"id": 1, "type": "loop", "mode": 0, "inputs": [], "widgets_values": []}
        sub = {"id": "loop", "inputs": [], "outputs": [], "nodes": [inner], "links": []}
        return {"nodes": [dict(inner)], "links": [], "definitions": {"subgraphs": [sub]}}
    raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("steps of the wrong kind", "malformed workflow"),
        ("a node without its type", "malformed workflow"),
        ("a loop of samplers", "or a loop of them"),
        ("a loop of switches", "form a loop"),
        ("a subgraph inside itself", "nested more than"),
    ],
)
def test_a_broken_graph_is_a_clear_error(served, kind, message):
    r = served.client.post("/api/workflow", content=json.dumps(broken(kind)))
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_json_nested_too_deeply(served):
    r = served.client.post("/api/workflow", content="[" * 100_000 + "]" * 100_000)
    assert r.status_code == 422 and "nested too deeply" in r.json()["detail"], r.text


def page_with_workflow(browser, served, tmp_path, w, prompt: str, noted: str, errors: list):
    """The page with workflow ``w`` (its prompt set to ``prompt``: the test's job and card alone) read into its form,
    once its notes say ``noted``."""
    from tests.server.test_page import open_page

    node(w, 6)["widgets_values"] = [prompt]
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(w.json()), encoding="utf-8")
    page = open_page(browser, served, errors)
    page.set_input_files("#workflow", str(path))
    page.wait_for_function(f"document.querySelector('#workflow-notes').textContent.includes({json.dumps(noted)})")
    return page


def test_the_page_fills_its_form_from_a_workflow(browser, served, tmp_path):
    fields = FIELDS | {"prompt": "a fox from a workflow"}
    errors: list = []
    page = page_with_workflow(browser, served, tmp_path, workflow(), fields["prompt"], "LoRA absent", errors)
    values = page.eval_on_selector(
        "#form", "f => Object.fromEntries([...new FormData(f)].filter(([k, v]) => typeof v === 'string'))"
    )
    expected = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in fields.items() if not isinstance(v, list)}
    assert {k: values.get(k) for k in expected} == expected
    assert values["guide_scale"] == "3,3.5" and values["loras"] == "style:0.5@high"
    page.click("button[type=submit]")
    card = page.locator("#gallery .card", has_text="a fox from a workflow")
    card.wait_for(timeout=60_000)
    job = next(j for j in served.client.get("/api/jobs").json() if j["params"]["prompt"] == fields["prompt"])
    assert job["status"] == "done", job
    sent = {k: job["params"].get(k) for k in ("steps", "shift", "solver", "scheduler", "switch_step", "loras")}
    assert sent == {k: fields[k] for k in sent}
    same = served.client.post("/api/jobs", json=fields).json()["id"]
    assert np.array_equal(video(served, job["id"]), video(served, served.wait(same)["id"]))
    assert not errors, errors


def test_a_job_keeps_its_frame_rate(served):
    """``fps``: the same frames saved at that rate (a workflow's CreateVideo rate), in the MP4 and in OpenAI's view."""
    import av

    fields = {"task": "t2v-A14B", "prompt": "a fast fox", "width": 64, "height": 48, "frames": 5, "steps": 2}
    job = served.wait(served.client.post("/api/jobs", json=fields | {"fps": 24}).json()["id"])
    with av.open(io.BytesIO(served.client.get(f"/api/jobs/{job['id']}/video").content)) as mp4:
        assert mp4.streams.video[0].average_rate == 24
    assert served.client.get(f"/v1/videos/{job['id']}").json()["seconds"] == f"{4 / 24:g}"
    plain = served.wait(served.client.post("/api/jobs", json=fields).json()["id"])
    with av.open(io.BytesIO(served.client.get(f"/api/jobs/{plain['id']}/video").content)) as mp4:
        assert mp4.streams.video[0].average_rate == 16  # (the task's)


def video(server, job_id) -> np.ndarray:
    from tests.server.test_loras import frames

    return frames(server, server.client.get(f"/api/jobs/{job_id}").json())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scheduler": "karas"}, "scheduler"),
        ({"sigmas": "1,a"}, "separated by commas"),
        ({"sigmas": "1,0.5,0.7"}, "fall strictly"),
        ({"sigmas": [1.0, 0.5], "shift": 3}, "no shift"),
        ({"sigmas": ",".join(str(1 - i / 2000) for i in range(1500))}, "more steps than the limit"),
        ({"switch_step": 9}, "high-noise steps, 0..4"),
    ],
)
def test_schedule_fields_are_checked_before_queueing(served, change, message):
    base = {
        k: v for k, v in FIELDS.items() if k not in ("loras", *(("scheduler", "shift") if "sigmas" in change else ()))
    }
    r = served.client.post("/api/jobs", json=base | change)
    assert r.status_code == 422 and message in r.text, r.text


GUIDED = {"nag_scale": 11.0, "nag_alpha": 0.25, "nag_tau": 2.5, "nag_negative_prompt": "blurry", "riflex": 2,
          "enhance_a_video": 2.0, "slg_layers": "1", "slg_scale": 3.0, "slg_percent": "0.01,0.5"}  # fmt: skip


def guided_workflow():
    """``workflow()`` with KJNodes' WanVideoNAG, Apply RifleXRoPE WanVideo and WanVideo Enhance A Video and ComfyUI's
    SkipLayerGuidanceDiT on both experts (``GUIDED``)."""
    from tests.cli.test_workflow import relink

    w = workflow().add(9, "CLIPTextEncode", ["blurry"], clip=(38, 0))
    for sampler, sampling, nag, slg, riflex, enhance in ((57, 54, 70, 72, 74, 76), (58, 55, 71, 73, 75, 77)):
        w.add(nag, "WanVideoNAG", [11.0, 0.25, 2.5, "default"], model=(sampling, 0), conditioning=(9, 0))
        w.add(riflex, "ApplyRifleXRoPE_WanVideo", [2], model=(nag, 0), latent=(59, 0))
        w.add(enhance, "WanVideoEnhanceAVideoKJ", [2.0], model=(riflex, 0), latent=(59, 0))
        w.add(slg, "SkipLayerGuidanceDiT", ["1", "", 3.0, 0.01, 0.5, 0.0], model=(enhance, 0))
        relink(w, sampler, "model", slg)
    return w


def test_nag_and_skip_layer_guidance_carry_over(served):
    """KJNodes' WanVideoNAG and RIFLEx and ComfyUI's skip layer guidance nodes become the job's fields (read through
    the server as through the CLI), experts on models of different shifts its low_noise_shift, and the jobs run them;
    a workflow setting no job field takes is an error, never a job made without it."""
    from wanflow.server.workflow import _check_carried

    read = served.client.post("/api/workflow", content=json.dumps(guided_workflow().json())).json()
    assert read["fields"] == FIELDS | GUIDED
    job = served.client.post("/api/jobs", json=read["fields"])
    assert job.status_code == 202 and served.wait(job.json()["id"])["status"] == "done"
    shifted = workflow()
    node(shifted, 54)["widgets_values"] = [5.0]  # (the high-noise model's shift: its steps apart from the low one's)
    read = served.client.post("/api/workflow", content=json.dumps(shifted.json())).json()
    assert read["fields"] == FIELDS | {"shift": 5.0, "low_noise_shift": 8.0}
    job = served.client.post("/api/jobs", json=read["fields"])
    assert job.status_code == 202 and served.wait(job.json()["id"])["status"] == "done"
    with pytest.raises(ValueError, match=r"the workflow's \['window_anchor'\] do not carry over"):
        _check_carried(["--prompt", "a", "--window_anchor", "0.5", "--dit", "x.gguf"])


def test_the_page_sends_what_its_form_lacks(browser, served, tmp_path):
    """A workflow's fields the page has inputs for (NAG scale, SLG blocks, NAG's negative prompt, RIFLEx) fill them; the
    others (NAG's alpha and tau, SLG's scale and window) are named in the notes and sent with the job as read."""
    errors: list = []
    page = page_with_workflow(browser, served, tmp_path, guided_workflow(), "a guided fox", "also sent", errors)
    notes = page.text_content("#workflow-notes")
    assert "slg_percent 0.01,0.5" in notes and "nag_alpha 0.25" in notes and "slg_scale 3" in notes
    form = "f => [f.nag_scale.value, f.slg_layers.value, f.riflex.value, f.enhance_a_video.value]"
    assert page.eval_on_selector("#form", form) == ["11", "1", "2", "2"]
    assert "riflex" not in notes.split("also sent")[1] and "enhance" not in notes.split("also sent")[1]  # (its inputs)
    page.click("button[type=submit]")
    page.locator("#gallery .card", has_text="a guided fox").wait_for(timeout=60_000)
    job = next(j for j in served.client.get("/api/jobs").json() if j["params"]["prompt"] == "a guided fox")
    assert job["status"] == "done" and {k: job["params"].get(k) for k in GUIDED} == GUIDED
    assert not errors, errors


def three_samplers():
    """The "three KSampler" recipe (tests/cli/test_workflow_calls.py) with this server's LoRA: the high-noise model
    alone at cfg 3.5 for steps 0-2, with the LoRA at cfg 1 for 2-4, the low-noise model at cfg 1 from 4."""
    from tests.cli.test_workflow import relink

    w = t2v(high=(0, 2), low=(4, 10000), steps=6)
    w.add(63, "LoraLoaderModelOnly", ["style.safetensors", 1.0], model=(37, 0))
    w.add(62, "ModelSamplingSD3", [8], model=(63, 0))
    w.add(61, "KSamplerAdvanced", ["disable", 4, "fixed", 6, 1.0, "euler", "simple", 2, 4, "enable"],
          model=(62, 0), positive=(6, 0), negative=(7, 0), latent_image=(57, 0))  # fmt: skip
    relink(w, 58, "latent_image", 61)
    node(w, 58)["widgets_values"][4] = 1.0
    return w


CALLS = {
    "steps": 6, "switch_step": 4, "guide_scale": [1.0, 3.5], "sampler_calls": "2,4", "call_guide_scale": "3.5,1,1",
    "loras": [{"name": "style", "strength": [0.0, 1.0], "expert": "high"}],
}  # fmt: skip


def test_a_chain_of_samplers_carries_over(served):
    """The three samplers become the job's sampler calls, its LoRA a strength for each high-noise call; the job runs
    them, and strengths that do not fit the calls are refused when the job is sent."""
    read = served.client.post("/api/workflow", content=json.dumps(three_samplers().json())).json()
    assert read["fields"] == {k: v for k, v in FIELDS.items() if k != "loras"} | CALLS
    made = {}
    for name, strength in (("calls", [0.0, 1.0]), ("off", 0.0), ("on", 1.0)):  # (each call's, or one for all)
        fields = read["fields"] | {"loras": [{"name": "style", "strength": strength, "expert": "high"}]}
        job = served.client.post("/api/jobs", json=fields)
        assert job.status_code == 202 and served.wait(job.json()["id"])["status"] == "done"
        made[name] = video(served, job.json()["id"])
    assert not np.array_equal(made["calls"], made["off"]) and not np.array_equal(made["calls"], made["on"])
    bad = read["fields"] | {"loras": "style:0;1;1@high"}  # (the form's spelling: three for two high-noise calls)
    r = served.client.post("/api/jobs", json=bad)
    assert r.status_code == 422 and "3 strengths for the 2 sampler calls of its experts" in r.text


def test_the_page_sends_a_chain_of_samplers(browser, served, tmp_path):
    """The page shows the calls in its own inputs and the LoRA's strength for each call (``style:0;1@high``), and
    sends them."""
    errors: list = []
    page = page_with_workflow(browser, served, tmp_path, three_samplers(), "a chained fox", "own t2v-A14B", errors)
    calls = "f => [f.sampler_calls.value, f.call_guide_scale.value, f.loras.value]"
    assert page.eval_on_selector("#form", calls) == ["2,4", "3.5,1,1", "style:0;1@high"]
    assert "sampler_calls" not in page.text_content("#workflow-notes")  # (not among what is sent besides the form)
    page.click("button[type=submit]")
    page.locator("#gallery .card", has_text="a chained fox").wait_for(timeout=60_000)
    job = next(j for j in served.client.get("/api/jobs").json() if j["params"]["prompt"] == "a chained fox")
    assert job["status"] == "done", job
    assert {k: job["params"].get(k) for k in CALLS if k != "guide_scale"} == {k: v for k, v in CALLS.items()
                                                                               if k != "guide_scale"}  # fmt: skip
    assert not errors, errors


def test_a_kjnodes_resize_carries_over_where_the_size_is_given(served, tmp_path):
    """KJNodes' ImageResizeKJv2 becomes the job's image_scale; where the video's size is the resized image's, the
    page's workflow (read without its image) is an error saying so."""
    from tests.cli.test_workflow import kj_i2v

    w = kj_i2v(tmp_path)
    refused = served.client.post("/api/workflow", content=json.dumps(w.json()))
    assert refused.status_code == 422 and "size of the image start.png" in refused.text
    wan = node(w, 81)
    wan["inputs"] = [i for i in wan["inputs"] if i["name"] not in ("width", "height")]  # (the node's own size)
    read = served.client.post("/api/workflow", content=json.dumps(w.json())).json()
    assert read["fields"]["image_scale"] == "lanczos:24*16:crop:left:8" and read["fields"]["image_fit"] == "crop"
    assert (read["fields"]["width"], read["fields"]["height"]) == (640, 640)


def test_an_image_scale_carries_over(served, tmp_path):
    """ComfyUI's ImageScale before the Wan image node becomes the job's image_scale beside image_fit crop."""
    from tests.cli.test_workflow import first_last, relink

    w = first_last(tmp_path)
    w.add(82, "ImageScale", ["area", 0, 480, "disabled"], image=(80, 0))
    relink(w, 81, "start_image", 82)
    w.nodes = [n for n in w.nodes if n["id"] != 89]  # (no end image)
    for entry in node(w, 81)["inputs"]:
        entry["link"] = None if entry["name"] == "end_image" else entry["link"]
    read = served.client.post("/api/workflow", content=json.dumps(w.json())).json()
    assert read["task"] == "i2v-A14B", read
    assert read["fields"]["image_scale"] == "area:0*480" and read["fields"]["image_fit"] == "crop"
