"""What the ``train-lora`` tests share: a tiny T2V-A14B checkpoint and a data folder of two captioned bar clips, made
once per test module."""

import pytest

from tests.tiny.checkpoint import write_official_checkpoint
from tests.training.lora_helpers import write_data


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "t2v", "t2v-A14B")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "clips", clips=2)
