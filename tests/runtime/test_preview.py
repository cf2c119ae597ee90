"""Live previews: the least-squares fit recovers a known linear map, the mean colours under each latent pixel, the
maps found beside a checkpoint or published, the x0 picture the hook shows, and ``--preview`` writing a PNG while
sampling runs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.cli import main
from wanflow.cli.generate import preview_writer
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.preview import (
    PREVIEW_FILE,
    PreviewMap,
    fit_preview_map,
    load_preview_map,
    pixel_targets,
    preview_image,
)
from wanflow.sampling.hooks import StepHook


def test_fit_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 3, generator=g), torch.randn(3, generator=g)
    latents = torch.randn(500, 16, generator=g)
    rgb = latents @ weight + bias + 1e-4 * torch.randn(500, 3, generator=g)
    fitted = fit_preview_map(latents, rgb)
    torch.testing.assert_close(fitted.weight, weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-4, rtol=0)


def test_pixel_targets_average_under_each_latent_pixel():
    video = torch.arange(3 * 5 * 4 * 4, dtype=torch.float32).view(3, 5, 4, 4)
    target = pixel_targets(video, (4, 2, 2))  # frame 0 alone, then frames 1-4; 2x2 blocks
    assert target.shape == (3, 2, 2, 2)
    assert target[0, 0, 0, 0] == video[0, 0, :2, :2].mean()
    assert target[2, 1, 1, 0] == video[2, 1:5, 2:4, 0:2].mean()


def test_the_checkpoints_map_comes_first_then_comfyuis(tmp_path):
    wan21 = load_preview_map(tmp_path, "2.1", 16)
    assert wan21.weight[0].tolist() == pytest.approx([-0.1299, -0.1692, 0.2932])  # ComfyUI's Wan21, first row
    assert wan21.bias.tolist() == pytest.approx([-0.1835, -0.0868, -0.3360])
    assert load_preview_map(None, "2.2", 48).weight.shape == (48, 3)
    own = PreviewMap(torch.eye(16)[:, :3], torch.zeros(3))
    (tmp_path / PREVIEW_FILE).write_text(json.dumps(own.to_json()))
    assert torch.equal(load_preview_map(tmp_path, "2.1", 16).weight, own.weight)
    with pytest.raises(ValueError, match="16 channels, the VAE 48"):
        load_preview_map(tmp_path, "2.2", 48)


def test_preview_image_shows_the_middle_frame_scaled():
    latents = torch.zeros(1, 16, 3, 2, 2)
    latents[0, 0, 1, 0, 1] = 1.0  # channel 0 of the middle frame, top right
    identity = PreviewMap(torch.eye(16)[:, :3], -torch.ones(3))  # red = channel 0, green = 1, blue = 2; bias -1
    image = np.asarray(preview_image(identity, latents, scale=1))
    assert image.shape == (2, 2, 3)
    assert image[0, 1].tolist() == [128, 0, 0] and image[1, 0].tolist() == [0, 0, 0]
    assert preview_image(identity, latents, scale=8).size == (16, 16)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B"))


class Latents(StepHook):
    """Keeps what the preview needs to be checked against: each step's input latents and velocity."""

    def __init__(self):
        self.seen = {}

    def wrap(self, velocity, step):
        def keep(model, latents, t, cond, scale):
            v = velocity(model, latents, t, cond, scale)
            self.seen[step.index] = (latents.clone(), v.clone(), step.timestep)
            return v

        return keep


def test_the_hook_shows_the_x0_estimate_every_few_steps(t2v):
    shown, keep = [], Latents()
    hook = t2v.preview(lambda image, step: shown.append((step.index, image)), every=2)
    t2v("a red circle", seed=1, size=(64, 64), frames=5, steps=5, hooks=[keep, hook])
    assert [i for i, _ in shown] == [1, 3, 4]  # every second step and the last
    latents, v, timestep = keep.seen[3]
    want = preview_image(hook.preview_map, latents - timestep / 1000 * v, scale=8)
    assert shown[1][1].size == (64, 64) and np.array_equal(np.asarray(shown[1][1]), np.asarray(want))


class FileSeen(StepHook):
    def __init__(self, path):
        self.path, self.sizes = path, {}

    def after(self, step, latents):
        if self.path.exists():
            with Image.open(self.path) as image:
                self.sizes[step.index] = image.size


def test_preview_file_is_written_while_sampling(t2v, tmp_path):
    path = tmp_path / "sub" / "now.png"
    seen = FileSeen(path)
    t2v("a red circle", seed=1, size=(64, 64), frames=5, steps=6, hooks=[preview_writer(t2v, str(path)), seen])
    assert seen.sizes == {1: (64, 64), 2: (64, 64), 3: (64, 64), 4: (64, 64), 5: (64, 64)}  # from the 2nd step on
    assert [p.name for p in path.parent.iterdir()] == ["now.png"]  # no temporary file left behind


def test_generate_preview_flag(tmp_path, capsys):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", "t2v-A14B")
    common = ["generate", "x", "--ckpt_dir", str(ckpt), "--size", "64*64", "--frame_num", "5", "--sample_steps", "3"]
    code = main([*common, "--save_file", str(tmp_path / "v.mp4"), "--preview", str(tmp_path / "p.png")])
    assert code == 0
    with Image.open(tmp_path / "p.png") as image:
        assert image.format == "PNG" and image.size == (64, 64)
    assert main([*common, "--save_file", str(tmp_path / "w.mp4"), "--preview", str(tmp_path / "p.jpg")]) == 2
    assert "--preview writes a PNG" in capsys.readouterr().err
