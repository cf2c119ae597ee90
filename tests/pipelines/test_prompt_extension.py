"""Prompt extension with a tiny random ``Qwen2ForCausalLM`` and a byte-level tokenizer made here: the chat template
and the system prompt reach the model, one seed gives one extension, a failure keeps the original prompt, and the
extended prompt is what the text encoder reads and the metadata records."""

import logging

import pytest
import torch

from tests.pipelines.test_parity import square_image
from tests.tiny.chat import chatml, write_chat_model
from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.prompts.extend import LocalExtender, extend_prompt, make_extender
from wanflow.prompts.system import SYSTEM_PROMPTS, system_prompt

FAST = dict(size=(64, 64), frames=5, steps=2, seed=3)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return write_chat_model(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def extender(chat_dir):
    return LocalExtender(str(chat_dir), max_new_tokens=24).load()


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B"))


def recorded_inputs(extender, monkeypatch):
    """The token ids each ``generate`` call of ``extender``'s model is given."""
    seen, generate = [], extender.model.generate
    monkeypatch.setattr(extender.model, "generate", lambda **kw: seen.append(kw["input_ids"]) or generate(**kw))
    return seen


def test_the_model_reads_the_chat_template_with_the_system_prompt(extender, monkeypatch):
    seen = recorded_inputs(extender, monkeypatch)
    text, ok = extend_prompt(extender, "a cat on a wall", None, "en", seed=7)
    assert ok and text
    decoded = extender.processor.decode(seen[0][0], skip_special_tokens=False)
    assert decoded == chatml(SYSTEM_PROMPTS["t2v", "en"], "a cat on a wall")
    extend_prompt(extender, "a cat on a wall", None, "zh", seed=7)
    assert extender.processor.decode(seen[1][0]) == chatml(system_prompt("t2v", "zh"), "a cat on a wall")


def test_an_image_task_gets_the_motion_prompt():
    seen = []
    fake = type("Fake", (), {"name": "fake", "__call__": lambda self, *a: seen.append(a) or "it moves"})()
    assert extend_prompt(fake, "the cat jumps", square_image(), "en", 1) == ("it moves", True)
    assert extend_prompt(fake, " ", square_image(), "en", 1) == ("it moves", True)
    assert seen[0][0] == SYSTEM_PROMPTS["i2v", "en"] and seen[1][0] == SYSTEM_PROMPTS["i2v_empty", "en"]


def test_one_seed_gives_one_extension(extender):
    a = extend_prompt(extender, "a boat", None, "en", seed=11)
    assert a == extend_prompt(extender, "a boat", None, "en", seed=11)
    assert a[0] != extend_prompt(extender, "a boat", None, "en", seed=12)[0]
    torch.manual_seed(0)  # the caller's random state is left alone
    first = torch.rand(1)
    torch.manual_seed(0)
    extend_prompt(extender, "a boat", None, "en", seed=11)
    assert torch.equal(torch.rand(1), first)


def test_a_failure_keeps_the_original_prompt(extender, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(extender.model, "generate", broken)
    with caplog.at_level(logging.WARNING):
        assert extend_prompt(extender, "a boat", None, "en", 1) == ("a boat", False)
    assert "prompt extension failed (RuntimeError: CUDA error" in caplog.text


def test_the_extended_prompt_reaches_the_text_encoder_and_the_metadata(t2v, extender, monkeypatch):
    expected, ok = extend_prompt(extender, "a red ball", None, "en", seed=5)
    assert ok
    encode, read = t2v.text_encoder.encode, []
    monkeypatch.setattr(t2v.text_encoder, "encode", lambda texts: read.extend(texts) or encode(texts))
    t2v.set_prompt_extender(extender)
    try:
        video = t2v("a red ball", extend_prompt=True, prompt_extend_lang="en", prompt_extend_seed=5, **FAST)
    finally:
        t2v.set_prompt_extender(None)
    assert read[0] == expected
    meta = video.metadata
    assert meta["prompt"] == expected and meta["original_prompt"] == "a red ball" and meta["prompt_extended"] is True
    assert meta["prompt_extender"] == f"local:{extender.source}" and meta["prompt_extend_seed"] == 5
    assert torch.equal(video.frames, t2v(expected, **FAST).frames)  # the same video as the extended text given


def test_a_failed_extension_makes_the_video_of_the_original_prompt(t2v, monkeypatch):
    def broken(system, prompt, image, seed):
        raise OSError("connection refused")

    t2v.set_prompt_extender(type("Broken", (), {"name": "broken", "__call__": staticmethod(broken)})())
    try:
        video = t2v("a red ball", extend_prompt=True, **FAST)
    finally:
        t2v.set_prompt_extender(None)
    assert video.metadata["prompt"] == "a red ball" and video.metadata["prompt_extended"] is False
    assert torch.equal(video.frames, t2v("a red ball", **FAST).frames)


def test_bad_extension_requests_are_one_line(t2v, tmp_path):
    with pytest.raises(ValueError, match="extend_prompt needs a prompt extender"):
        t2v("x", extend_prompt=True, **FAST)
    with pytest.raises(ValueError, match=r"unknown prompt_extend_lang 'fr'; choose one of \['zh', 'en'\]"):
        t2v("x", extend_prompt=True, prompt_extend_lang="fr", **FAST)
    with pytest.raises(ValueError, match="cannot load the prompt extension model") as e:
        LocalExtender(str(tmp_path)).load()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown prompt_extend_method 'openai'"):
        make_extender("openai")
