"""One options object: the Python API, the CLI and the server map onto ``GenerateOptions`` and get the same
``Request``; their choices come from the registries."""

import argparse

import pytest
import torch

from wanflow.cli.generate import add_arguments, generate_options, runtime_options
from wanflow.pipelines.pipeline import RuntimeOptions
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.offload import POLICIES
from wanflow.sampling.comfy_schedules import SCHEDULERS, comfy_sigmas
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


def test_the_noise_device_is_the_same_request_from_every_surface():
    task = TASKS["t2v-A14B"]
    args = cli("a fox", "--noise_device", "cpu", "--base_seed", "2")
    server = GenerateRequest(task="t2v-A14B", prompt="a fox", noise_device="cpu", seed=2)
    python = GenerateOptions("a fox", noise_device="cpu", seed=2)
    requests = [resolve(o, task) for o in (generate_options(args), server.options(), python)]
    assert requests[0] == requests[1] == requests[2]
    assert requests[0].noise_device == "cpu" and requests[0].metadata()["noise_device"] == "cpu"
    for default in (None, "device"):  # (the run's device: nothing in the metadata)
        request = resolve(GenerateOptions("a fox", noise_device=default), task)
        assert request.noise_device is None and "noise_device" not in request.metadata()
    with pytest.raises(ValueError, match=r"noise_device is one of \('device', 'cpu'\)"):
        resolve(GenerateOptions("a fox", noise_device="cuda"), task)


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


def test_a_comfyui_schedule_is_the_same_request_from_every_surface():
    task = TASKS["t2v-A14B"]
    args = cli("a fox", "--scheduler", "beta", "--sample_shift", "8", "--sample_steps", "7", "--base_seed", "2")
    server = GenerateRequest(task="t2v-A14B", prompt="a fox", scheduler="beta", shift=8, steps=7, seed=2)
    python = GenerateOptions("a fox", scheduler="beta", shift=8, steps=7, seed=2, solver="unipc")
    requests = [resolve(o, task) for o in (generate_options(args), server.options(), python)]
    assert requests[0] == requests[1] == requests[2]
    grid = requests[0].grid
    assert (grid.name, grid.solver, requests[0].float_timesteps) == ("beta", "unipc", True)
    assert torch.equal(grid.schedule.sigmas, comfy_sigmas("beta", 7, 8.0))
    given = cli("a fox", "--sigmas", "1,0.75,0.5,0.25", "--sample_solver", "euler", "--base_seed", "2")
    server = GenerateRequest(task="t2v-A14B", prompt="a fox", sigmas=[1, 0.75, 0.5, 0.25], solver="euler", seed=2)
    requests = [resolve(o, task) for o in (generate_options(given), server.options())]
    assert requests[0] == requests[1] and requests[0].steps == 4 and requests[0].grid.name == "sigmas"


def test_a_schedule_sets_the_steps():
    """The steps that run are the schedule's: beta drops repeated sigmas, given sigmas count themselves (a preset's
    steps and shift give way to them), and switch_step is checked against them."""
    task = TASKS["t2v-A14B"]
    assert resolve(GenerateOptions("x", scheduler="beta", steps=400), task).steps < 400
    given = resolve(GenerateOptions("x", sigmas=[1, 0.8, 0.5], preset="lightning"), task)
    assert given.steps == 3 and given.solver == "euler" and given.grid.schedule.sigmas[-1] == 0
    assert resolve(GenerateOptions("x", sigmas="1,0.8,0.5", switch_step=3), task).switch_step == 3
    with pytest.raises(ValueError, match=r"high-noise steps, 0\.\.3, got 4"):
        resolve(GenerateOptions("x", sigmas="1,0.8,0.5", switch_step=4), task)
    ints = resolve(GenerateOptions("x", scheduler="simple", steps=4, float_timesteps=False), task)
    floats = comfy_sigmas("simple", 4, task.shift)[:-1] * 1000
    assert not ints.float_timesteps and ints.grid.schedule.timesteps.tolist() == [int(t) for t in floats]
    assert ints.grid.schedule.timesteps.tolist()[:3] == [1000, 972, 923]  # shift 12: 1000 s / (1 + 11 s) at 1, 3/4, 1/2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(sigmas="1,0.5", scheduler="beta"), "scheduler or sigmas, not both"),
        (dict(sigmas="1,0.5", shift=5.0), "no shift"),
        (dict(sigmas="1,0.5", steps=4), "the sigmas make 2 steps"),
        (dict(sigmas="1,1.5"), r"in \[0, 1\]"),
        (dict(scheduler="karras2"), "unknown scheduler 'karras2'"),
    ],
)
def test_schedule_refusals(options, message):
    with pytest.raises(ValueError, match=message):
        resolve(GenerateOptions("x", **options), TASKS["t2v-A14B"])


def test_the_server_checks_the_schedule_fields():
    with pytest.raises(ValueError, match="scheduler"):
        GenerateRequest(prompt="x", scheduler="karas")
    assert GenerateRequest.model_json_schema()["properties"]["scheduler"]["anyOf"][0]["enum"] == sorted(SCHEDULERS)
