"""One options object: the Python API, the CLI and the server map onto ``GenerateOptions`` and get the same
``Request``; their choices come from the registries."""

import argparse

import pytest

from wanflow.cli.generate import add_arguments, generate_options, runtime_options
from wanflow.pipelines.pipeline import RuntimeOptions
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.offload import POLICIES
from wanflow.sampling.solvers import SOLVERS
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_server_and_python_give_the_same_request():
    task = TASKS["ti2v-5B"]
    args = cli(
        "a boat", "--task", "ti2v-5B", "--size", "1280*704", "--frame_num", "9", "--sample_steps", "7",
        "--sample_shift", "3", "--sample_guide_scale", "4.5", "--sample_solver", "euler", "--base_seed", "11",
    )  # fmt: skip
    server = GenerateRequest(
        task="ti2v-5B", prompt="a boat", width=1280, height=704, frames=9, steps=7, shift=3, guide_scale=[4.5],
        solver="euler", seed=11,
    )  # fmt: skip
    python = GenerateOptions(
        "a boat", size=(1280, 704), frames=9, steps=7, shift=3, guide_scale=4.5, solver="euler", seed=11
    )
    requests = [resolve(o, task) for o in (generate_options(args), server.options(), python)]
    assert requests[0] == requests[1] == requests[2]
    assert requests[0].negative_prompt == task.negative_prompt and requests[0].guide_scale == 4.5


def test_choices_come_from_the_registries():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert choices["sample_solver"] == sorted(SOLVERS) and list(choices["offload"]) == list(POLICIES)
    assert choices["task"] == sorted(TASKS)
    schema = GenerateRequest.model_json_schema()["properties"]["solver"]
    assert schema["enum"] == list(SOLVERS)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown generation options \['num_steps'\]"):
        GenerateOptions.from_keywords("x", num_steps=4)


def test_runtime_flags_map_onto_runtime_options():
    args = cli("x", "--offload_model", "false", "--t5_cpu", "--vae_tile", "3", "--convert_model_dtype")
    assert runtime_options(args) == RuntimeOptions(
        offload="resident", t5_cpu=True, vae_tile=3, convert_model_dtype=True
    )
    assert runtime_options(cli("x", "--offload", "block", "--offload_model", "false")).offload == "block"
    with pytest.raises(ValueError, match="unknown offload policy"):
        RuntimeOptions(offload="disk")
