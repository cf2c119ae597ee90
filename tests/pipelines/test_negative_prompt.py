"""None means the task's negative prompt, "" means none: through the Python API, the CLI and the server's JSON."""

import argparse

import pytest

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli.generate import add_arguments, generate_options
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import DEFAULT_NEGATIVE_PROMPT, TASKS

TASK = TASKS["t2v-A14B"]


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_none_is_the_tasks_and_empty_is_none():
    assert TASK.negative_prompt == DEFAULT_NEGATIVE_PROMPT != ""
    assert resolve(GenerateOptions("x"), TASK).negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert resolve(GenerateOptions("x", negative_prompt=""), TASK).negative_prompt == ""
    assert resolve(GenerateOptions("x", negative_prompt="blur"), TASK).negative_prompt == "blur"
    with pytest.raises(ValueError, match="negative_prompt must be a string"):
        resolve(GenerateOptions("x", negative_prompt=3), TASK)


def test_cli_flag_and_server_json_map_empty_to_empty():
    assert resolve(generate_options(cli("x", "--negative_prompt", "")), TASK).negative_prompt == ""
    assert resolve(generate_options(cli("x")), TASK).negative_prompt == DEFAULT_NEGATIVE_PROMPT
    empty = GenerateRequest.model_validate_json('{"task": "t2v-A14B", "prompt": "x", "negative_prompt": ""}')
    assert resolve(empty.options(), TASK).negative_prompt == ""
    left_out = GenerateRequest.model_validate_json('{"task": "t2v-A14B", "prompt": "x"}')
    assert resolve(left_out.options(), TASK).negative_prompt == DEFAULT_NEGATIVE_PROMPT


def test_the_text_encoder_sees_the_empty_negative_prompt(tmp_path, monkeypatch):
    pipe = WanPipeline.from_pretrained(write_official_checkpoint(tmp_path, "t2v-A14B"))
    seen, encode = [], pipe.text_encoder.encode
    monkeypatch.setattr(pipe.text_encoder, "encode", lambda texts: seen.extend(texts) or encode(texts))
    fast = dict(size=(64, 64), frames=5, steps=2, seed=1)
    empty = pipe("a cat", negative_prompt="", **fast)
    default = pipe("a cat", **fast)
    assert seen == ["a cat", "", "a cat", DEFAULT_NEGATIVE_PROMPT]
    assert empty.metadata["negative_prompt"] == "" and not empty.frames.equal(default.frames)
