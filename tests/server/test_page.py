"""Issue 21, the web page in headless Chromium: seeds exact past 2^53, the queue count kept current, thumbnails that
show a frame, the API docs without internet, and a negative prompt left out or empty on purpose."""

from __future__ import annotations

import pytest

for _name in ("httpx", "fastapi", "uvicorn", "multipart", "fastapi_offline"):
    pytest.importorskip(_name, reason="the server tests need the server extra and httpx (pip install wanflow[server])")

from tests.server.conftest import TOKEN  # noqa: E402

BIG_SEED = "1697222650902034796"  # a JavaScript number would make it 1697222650902034700


def open_page(browser, server, errors: list):
    """The page, signed in; only the server itself can be reached (no internet, as on an offline machine)."""
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: _local_only(route, server.url, errors))
    page.goto(server.url + "/")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#task option", state="attached")
    return page


def _local_only(route, url: str, errors: list) -> None:
    if route.request.url.startswith(url):
        route.continue_()
    else:
        errors.append(f"asked for {route.request.url}")
        route.abort()


def test_seeds_round_trip_exactly(browser, server):
    """A seed typed in the form comes back exact from the job, and the gallery shows it exact; so does one sent
    as a JSON string or number through the API."""
    api = server.client.post("/api/jobs", json={**_T2V, "prompt": "api seed", "seed": int(BIG_SEED) + 1}).json()
    assert api["seed"] is None and api["params"]["seed"] == str(int(BIG_SEED) + 1)
    as_text = server.client.post("/api/jobs", json={**_T2V, "prompt": "text seed", "seed": "9007199254740993"})
    assert as_text.json()["params"]["seed"] == "9007199254740993"  # 2^53 + 1
    top = server.client.post("/api/jobs", json={**_T2V, "prompt": "top seed", "seed": str(2**64 - 1)})
    assert top.json()["params"]["seed"] == str(2**64 - 1)  # (ComfyUI's largest)
    errors: list = []
    page = open_page(browser, server, errors)
    page.select_option("#task", "t2v-A14B")
    page.fill("textarea[name=prompt]", "a seeded fox")
    for name, value in {"width": "32", "height": "32", "frames": "5", "steps": "2", "seed": BIG_SEED}.items():
        page.fill(f"input[name={name}]", value)
    page.click("button[type=submit]")
    card = page.locator("#gallery .card", has_text="a seeded fox")
    card.wait_for(timeout=60_000)
    assert BIG_SEED in card.text_content()
    job = next(j for j in server.client.get("/api/jobs").json() if j["params"]["prompt"] == "a seeded fox")
    assert job["seed"] == BIG_SEED and job["status"] == "done"
    seeds = (("api seed", str(int(BIG_SEED) + 1)), ("text seed", "9007199254740993"), ("top seed", str(2**64 - 1)))
    for prompt, seed in seeds:
        server.wait(next(j["id"] for j in server.client.get("/api/jobs").json() if j["params"]["prompt"] == prompt))
        page.evaluate("refresh()")
        other = page.locator("#gallery .card", has_text=prompt)
        other.wait_for(timeout=20_000)
        assert seed in other.text_content()
    assert not errors, errors


_T2V = {"task": "t2v-A14B", "width": 32, "height": 32, "frames": 5, "steps": 2}


def test_thumbnails_show_the_middle_frame(browser, server):
    """Chromium shows no frame of a video that was neither played nor seeked (a black box): the page seeks to the
    middle, and the frame there is painted."""
    server.wait(server.client.post("/api/jobs", json={**_T2V, "prompt": "thumbnail"}).json()["id"])
    errors: list = []
    page = open_page(browser, server, errors)
    video = page.locator("#gallery .card", has_text="thumbnail").locator("video")
    video.wait_for(timeout=20_000)
    state = page.wait_for_function(
        "v => v.error ? ['error', v.error.code] : (v.readyState >= 2 && !v.seeking && v.currentTime > 0 ? "
        "[v.currentTime, v.duration] : null)",
        arg=video.element_handle(),
        timeout=20_000,
    ).json_value()
    if state == ["error", 4]:
        pytest.skip("this Chromium build lacks H.264")
    assert state[0] == pytest.approx(state[1] / 2)
    painted = page.evaluate(
        """v => { const c = document.createElement('canvas'); c.width = c.height = 16;
        const x = c.getContext('2d'); x.drawImage(v, 0, 0, 16, 16);
        return x.getImageData(0, 0, 16, 16).data.some((value, i) => i % 4 !== 3 && value > 0); }""",
        video.element_handle(),
    )
    assert painted
    assert not errors, errors


def test_the_header_counts_the_queue(browser, slow_server):
    """Two jobs submitted from the page (a step of this model takes 2 s): one runs, one waits, and the header says
    so (it used to keep the count of when the page was loaded: '0 queued')."""
    errors: list = []
    page = open_page(browser, slow_server, errors)
    page.wait_for_function("() => document.querySelector('#health').textContent.includes('0 queued')")
    for prompt in ("first", "second"):
        page.fill("textarea[name=prompt]", prompt)
        page.click("button[type=submit]")
    page.wait_for_function("() => document.querySelector('#health').textContent.includes('1 queued · 1 running')")
    for job in slow_server.client.get("/api/jobs").json():
        slow_server.client.post(f"/api/jobs/{job['id']}/cancel")
    assert not errors, errors


def test_the_api_docs_render_offline(browser, server):
    errors: list = []
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: _local_only(route, server.url, errors))
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    paths = page.locator(".swagger-ui .opblock-summary-path").all_text_contents()
    assert "/api/jobs" in paths and "/v1/videos" in paths
    assert not errors, errors  # nothing was asked of another host


def test_a_new_token_keeps_the_task_picked(browser, server):
    """Reloading the task list (what a changed token does) keeps the task the user picked, not the first one."""
    errors: list = []
    page = open_page(browser, server, errors)
    names = page.eval_on_selector_all("#task option", "options => options.map(o => o.value)")
    assert len(names) > 1, names
    page.select_option("#task", names[-1])
    assert page.evaluate("loadTasks()") is True
    assert page.input_value("#task") == names[-1]
    page.close()
    assert not errors, errors


def test_the_form_sends_no_negative_prompt_only_when_asked(browser, server):
    """An empty negative prompt box means the task's default (the field is not sent); the box "no negative prompt"
    sends an empty one, which the job keeps as "" (no negative prompt at all)."""
    errors: list = []
    page = open_page(browser, server, errors)
    page.select_option("#task", "t2v-A14B")
    for prompt, check in (("default negative", False), ("no negative", True)):
        page.fill("textarea[name=prompt]", prompt)
        page.fill("textarea[name=negative_prompt]", "blurry")  # typed, then overridden by the box
        if check:
            page.check("#no-negative")
            assert page.is_disabled("textarea[name=negative_prompt]")
        else:
            page.fill("textarea[name=negative_prompt]", "")
        for name, value in {"width": "32", "height": "32", "frames": "5", "steps": "2"}.items():
            page.fill(f"input[name={name}]", value)
        page.click("button[type=submit]")
        page.locator("#queue li, #gallery .card", has_text=prompt).first.wait_for(timeout=30_000)
    jobs = {j["params"]["prompt"]: j["params"] for j in server.client.get("/api/jobs").json()}
    assert "negative_prompt" not in jobs["default negative"] and jobs["no negative"]["negative_prompt"] == ""
    assert not errors, errors


def test_an_empty_negative_prompt_field_of_a_form_is_kept_and_other_empty_fields_are_unset(server):
    data = {**{k: str(v) for k, v in _T2V.items()}, "prompt": "a form", "negative_prompt": "", "shift": ""}
    params = server.client.post("/api/jobs", data=data).json()["params"]
    assert params["negative_prompt"] == "" and "shift" not in params
