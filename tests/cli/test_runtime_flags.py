"""How the models run is asked the same way of ``generate``, ``serve`` and ``worker`` (``cli/runtime_flags.py``),
and reaches the pipelines they load."""

import argparse

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import generate
from wanflow.cli.runtime_flags import runtime_keywords
from wanflow.server import cli as serve_cli
from wanflow.server import worker_cli

FLAGS = ["--offload", "model", "--device", "cpu", "--dtype", "bfloat16", "--t5-cpu", "--fp8", "--vae_tile", "4"]
ASKED = {
    "offload": "model",
    "device": "cpu",
    "dtype": "bfloat16",
    "convert_model_dtype": False,
    "t5_cpu": True,
    "fp8": True,
    "compile": False,
    "vae_tile": 4,
}
DEFAULTS = {"offload": None, "device": None, "dtype": None, "convert_model_dtype": False, "t5_cpu": False}
DEFAULTS |= {"fp8": False, "compile": False, "vae_tile": 0}


def parsed(command, *flags) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args([*(["--queue", "sqlite:///q"] if command is worker_cli else []), *flags])


@pytest.mark.parametrize("command", [generate, serve_cli, worker_cli])
def test_every_command_takes_the_same_runtime_flags(command):
    assert runtime_keywords(parsed(command, *FLAGS)) == ASKED
    assert runtime_keywords(parsed(command)) == DEFAULTS


def test_they_reach_the_pipelines_served(tmp_path):
    ckpt = write_official_checkpoint(tmp_path / "t2v", "t2v-A14B")
    served, _ = serve_cli.builtin_models("ti2v-5B", runtime_keywords(parsed(serve_cli, *FLAGS)))
    worked, _ = worker_cli.checkpoint_models([str(ckpt)], runtime_keywords(parsed(worker_cli, *FLAGS)), lambda p: p)
    for pipe in (served["ti2v-5B"](), worked["t2v-A14B"]):
        runtime = pipe.runtime
        assert (runtime.offload, runtime.fp8, runtime.vae_tile, runtime.t5_cpu) == ("model", True, 4, True)
        assert pipe.vae.dtype == torch.bfloat16  # --dtype: every component
