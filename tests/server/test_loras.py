"""LoRAs per request on a real server: named from ``--lora_dir`` (never a path), applied for the job only, and every
bad choice answered 422 at submission."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

pytest.importorskip("httpx", reason="the server tests need the server extra and httpx")

from safetensors.torch import save_file

from tests.server.conftest import Server
from tests.tiny.checkpoint import TINY_DITS
from tests.tiny.lora import make_lora
from wanflow.sampling.comfy_schedules import SCHEDULERS
from wanflow.sampling.solvers import SOLVERS

T2V = {"task": "t2v-A14B", "prompt": "a red fox in the snow", "width": 32, "height": 32, "frames": 5, "steps": 2}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, checkpoints):
    folder = tmp_path_factory.mktemp("loras")
    cfg = TINY_DITS["t2v-A14B"]
    save_file(make_lora("kohya", cfg)[0], folder / "style.safetensors")
    save_file(make_lora("wan", cfg.replace(dim=48, num_heads=4))[0], folder / "wide.safetensors")
    data = (folder / "style.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "lightning").mkdir()
    save_file(make_lora("lightx2v", cfg, seed=3)[0], folder / "lightning" / "high_noise_model.safetensors")
    save_file(make_lora("wan", cfg, seed=4)[0], folder / "lightning" / "low_noise_model.safetensors")
    srv = Server(tmp_path_factory.mktemp("data"), {"t2v-A14B": checkpoints["t2v-A14B"]}, lora_dir=folder).start()
    yield srv
    srv.stop()


def frames(server, job) -> np.ndarray:
    data = server.client.get(job["video_url"]).content
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run(server, **change) -> dict:
    r = server.client.post("/api/jobs", json=T2V | {"seed": 5} | change)
    assert r.status_code == 202, r.text
    job = server.wait(r.json()["id"])
    assert job["status"] == "done", job
    return job


def test_loras_by_name_for_one_job_only(lora_server):
    c = lora_server.client
    assert c.get("/api/loras").json() == {"loras": ["cut", "lightning", "style", "wide"]}
    plain = run(lora_server)
    loras = [{"name": "style", "strength": 0.5}, {"name": "lightning"}]
    styled = run(lora_server, loras=loras, preset="lightning", steps=None)
    params = styled["params"]
    assert params["loras"][0] == {"name": "style", "strength": 0.5} and params["preset"] == "lightning"
    assert params["solver"] == "euler"  # the preset's: the schema's default does not hide it
    again = run(lora_server)
    assert np.array_equal(frames(lora_server, again), frames(lora_server, plain))  # nothing left behind
    assert not np.array_equal(frames(lora_server, styled), frames(lora_server, plain))
    assert styled["steps"] == 4  # the preset's


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ([{"name": "nope"}], "unknown LoRA 'nope'"),
        ([{"name": "../style"}], "unknown LoRA '../style'"),
        ([{"name": "/etc/passwd"}], "unknown LoRA"),
        ([{"name": "style", "strength": "strong"}], "strength"),
        ([{"name": "style", "expert": "middle"}], "expert"),
        ([{"name": "cut"}], "truncated"),
        ([{"name": "style", "path": "/tmp/x.safetensors"}], "loras.0: Extra inputs are not permitted"),
        ([{"name": "style"}] * 9, "at most 8"),
    ],
)
def test_bad_lora_choices_are_422(lora_server, loras, message):
    r = lora_server.client.post("/api/jobs", json=T2V | {"loras": loras})
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_lora_for_another_model_size_is_422_once_the_model_is_loaded(lora_server):
    run(lora_server)  # the pipeline is loaded: its shapes are known at submission
    r = lora_server.client.post("/api/jobs", json=T2V | {"loras": "wide:0.5"})  # the form-field spelling
    assert r.status_code == 422 and "another model size" in r.json()["detail"], r.text


def test_a_server_without_lora_dir_takes_none(server):
    assert server.client.get("/api/loras").json() == {"loras": []}
    r = server.client.post("/api/jobs", json=T2V | {"loras": [{"name": "style"}]})
    assert r.status_code == 422 and "takes no LoRAs" in r.json()["detail"], r.text


def test_the_page_sends_the_more_section(browser, lora_server):
    """The page's "More" section: its lists come from the server (presets, guidance rules, ComfyUI's schedulers, the
    LoRA folder's names), and a job sent with a preset, two LoRAs, CFG-Zero*, NAG and the beta scheduler runs with
    them: its parameters say so, its video is the same request's sent as JSON (and not the one without the
    scheduler), and its card shows them. (The form's solver used to be sent as unipc always, so the page ran the
    lightning preset with UniPC instead of its Euler.)"""
    from tests.server.test_page import open_page

    errors: list = []
    page = open_page(browser, lora_server, errors)
    page.click("#more summary")
    assert page.text_content("#lora-names") == "LoRAs here: cut, lightning, style, wide"
    listed = "s => Array.from(s.options, o => o.value)"
    assert page.eval_on_selector("#preset", listed) == ["", "lightning"]
    assert page.eval_on_selector("#guidance", listed) == ["cfg", "cfg_zero_star"]
    assert page.eval_on_selector("#scheduler", listed) == ["", *sorted(SCHEDULERS)]
    assert page.eval_on_selector("select[name=solver]", listed) == ["", *SOLVERS]
    assert page.eval_on_selector("select[name=image_fit]", listed) == ["", "crop"]  # (area: left out)
    page.select_option("#task", "t2v-A14B")
    page.fill("textarea[name=prompt]", "a fox from the page")
    fields = {"width": "32", "height": "32", "frames": "5", "seed": "5", "nag_scale": "3", "slg_layers": "1"}
    for name, value in fields.items():
        page.fill(f"input[name={name}]", value)
    page.select_option("#preset", "lightning")
    page.fill("input[name=loras]", "style:0.5, lightning@low")
    page.select_option("#guidance", "cfg_zero_star")
    page.select_option("#scheduler", "beta")
    page.fill("textarea[name=nag_negative_prompt]", "blurry")
    page.click("button[type=submit]")
    card = page.locator("#gallery .card", has_text="a fox from the page")
    card.wait_for(timeout=60_000)
    job = next(j for j in lora_server.client.get("/api/jobs").json() if j["params"]["prompt"] == "a fox from the page")
    p = job["params"]
    assert job["status"] == "done" and p["preset"] == "lightning" and p["guidance"] == "cfg_zero_star"
    assert p["solver"] == "euler"  # the preset's: the form's solver left at "(default)" is not sent
    assert p["loras"] == [{"name": "style", "strength": 0.5}, {"name": "lightning", "strength": 1.0, "expert": "low"}]
    assert (p["nag_scale"], p["nag_negative_prompt"], p["slg_layers"], p["scheduler"]) == (3.0, "blurry", "1", "beta")
    same = dict(prompt="a fox from the page", preset="lightning", steps=None, guidance="cfg_zero_star", nag_scale=3,
                nag_negative_prompt="blurry", loras=p["loras"], slg_layers="1", scheduler="beta")  # fmt: skip
    assert np.array_equal(frames(lora_server, job), frames(lora_server, run(lora_server, **same)))
    plain = run(lora_server, **{k: v for k, v in same.items() if k != "scheduler"})  # the preset's own grid
    assert not np.array_equal(frames(lora_server, job), frames(lora_server, plain))
    text = card.inner_text()
    assert "style:0.5, lightning:1@low" in text and "cfg_zero_star" in text and "3 · blurry" in text and "beta" in text
    assert not errors, errors


def test_slg_blocks_are_checked_against_the_loaded_model(lora_server):
    run(lora_server)  # (the model is loaded)
    r = lora_server.client.post("/api/jobs", json=T2V | {"slg_layers": "5"})
    assert r.status_code == 422 and "slg_layers [5]: this DiT has blocks 0..1" in r.text
