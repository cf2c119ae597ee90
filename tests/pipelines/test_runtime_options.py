"""Devices at the boundary: a device this machine lacks is one line that says what to use, at load and at
``pipe.to`` (diffusers' ``pipe.to("cuda")`` on a machine without a GPU), and the pipeline stays usable."""

import pytest
import torch

from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.runtime_options import RuntimeOptions, check_device

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@needs_no_gpu
def test_a_missing_gpu_is_one_line_at_load_and_at_to():
    with pytest.raises(ValueError, match=r"device cuda is not available.*use cpu"):
        RuntimeOptions(device="cuda").resolved_device()
    pipe = WanPipeline.from_builtin("ti2v-5B")
    with pytest.raises(ValueError, match=r"device cuda is not available.*use cpu"):
        pipe.to("cuda")
    assert pipe.device == torch.device("cpu")  # nothing moved
    video = pipe("a red circle moving right", steps=2, seed=1)
    assert video.frames.shape == (3, 9, 64, 64)


def test_an_unknown_device_name_is_one_line():
    with pytest.raises(ValueError, match=r"unknown device 'gpu0'"):
        check_device("gpu0")


def test_to_takes_diffusers_forms():
    pipe = WanPipeline.from_builtin("ti2v-5B")
    assert pipe.to("cpu", torch.float32) is pipe and pipe.to(torch_device="cpu", torch_dtype=torch.float32) is pipe
    assert pipe.to(torch.float32) is pipe and pipe.device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"dtypes are chosen at load: from_pretrained\(\.\.\., torch_dtype="):
        pipe.to("cpu", torch.bfloat16)
    with pytest.raises(TypeError, match="takes a device and a dtype"):
        pipe.to("cpu", torch.float32, "x")
