"""``from wanflow import WanPipeline, export_to_video``: the public names, imported only when first used."""

import subprocess
import sys

import pytest

import wanflow
from wanflow.io.image import load_image
from wanflow.pipelines.diffusers_api import export_to_video
from wanflow.pipelines.pipeline import WanPipeline


def test_public_names_are_the_modules_objects():
    assert wanflow.WanPipeline is WanPipeline and wanflow.export_to_video is export_to_video
    assert wanflow.load_image is load_image
    assert wanflow.WanImageToVideoPipeline is WanPipeline  # diffusers' class name: one class runs every task
    assert wanflow.WanVideoToVideoPipeline is WanPipeline
    assert set(wanflow.__all__) <= set(dir(wanflow))
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        wanflow.Pipeline  # noqa: B018


def test_import_wanflow_loads_no_torch():
    code = "import sys, wanflow; assert 'torch' not in sys.modules; wanflow.WanPipeline; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
