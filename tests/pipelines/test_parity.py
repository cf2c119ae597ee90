"""End to end against diffusers' Wan pipelines: tiny random models stored in the official layout and read by our
loader; diffusers reads the same weights from the folder that ``wanflow convert`` writes. Same initial latents, same
negative prompt, and a scheduler on the reference sigma grid (diffusers' default UniPC grid starts at 1, not 0.999).
"""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from tests.tiny.checkpoint import write_both_layouts
from wanflow.pipelines.pipeline import WanPipeline as Ours
from wanflow.sampling.schedule import UNIPC_SIGMA_MAX
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right on a black background"


class ReferenceUniPC(UniPCMultistepScheduler):
    """diffusers' UniPC on the official grid: linspace(0.999, 0) shifted once."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, **kwargs):
        if sigmas is None:
            sigmas = np.linspace(UNIPC_SIGMA_MAX, 0.0, num_inference_steps + 1)[:-1]
        super().set_timesteps(sigmas=sigmas, device=device, **kwargs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for task in TASKS:
        root = tmp_path_factory.mktemp(task)
        write_both_layouts(root, task, seed=11)
        out[task] = root
    return out


def diffusers_pipe(cls, folder, shift):
    pipe = cls.from_pretrained(folder)
    pipe.scheduler = ReferenceUniPC.from_config(pipe.scheduler.config, flow_shift=shift)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def square_image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def compare(ours_video, theirs_pt):
    theirs = theirs_pt[0].permute(1, 0, 2, 3)  # (F, 3, H, W) in [0, 1] -> (3, F, H, W)
    ours01 = (ours_video.frames + 1) / 2
    assert ours01.shape == theirs.shape
    diff = (ours01 - theirs).abs().max().item()
    assert diff <= 1e-4, diff
    assert ours01.std() > 0.05  # a real picture, not a constant


@pytest.mark.parametrize("task", ["t2v-A14B", "ti2v-5B"])
def test_text_to_video_matches_diffusers(task, checkpoints):
    spec = TASKS[task]
    ours = Ours.from_pretrained(checkpoints[task] / "official")
    theirs = diffusers_pipe(WanPipeline, checkpoints[task] / "diffusers", spec.shift)
    steps = 8  # t2v: timesteps 999 ... 877 on the high-noise expert, then 799, 631 on the low-noise one
    noise = ours.noise((ours.vae.cfg.z_dim, 3, 64 // ours.vae.cfg.stride[1], 64 // ours.vae.cfg.stride[1]), seed=3)
    video = ours(
        PROMPT, size=(64, 64), frames=9, steps=steps, latents=noise, guide_scale=(3.0, 4.5) if spec.boundary else 5.0
    )
    kwargs = dict(guidance_scale=4.5, guidance_scale_2=3.0) if spec.boundary else dict(guidance_scale=5.0)
    with torch.no_grad():
        out = theirs(
            PROMPT,
            negative_prompt=spec.negative_prompt,
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=steps,
            latents=noise.clone(),
            output_type="pt",
            **kwargs,
        ).frames
    compare(video, out)


@pytest.mark.parametrize("task", ["i2v-A14B", "ti2v-5B"])
def test_image_to_video_matches_diffusers(task, checkpoints):
    spec = TASKS[task]
    ours = Ours.from_pretrained(checkpoints[task] / "official")
    theirs = diffusers_pipe(WanImageToVideoPipeline, checkpoints[task] / "diffusers", spec.shift)
    image = square_image()  # already at the output size: diffusers resizes without the reference's crop
    s = ours.vae.cfg.stride[1]
    noise = ours.noise((ours.vae.cfg.z_dim, 3, 64 // s, 64 // s), seed=4)
    guide = (3.0, 4.5) if spec.boundary else 5.0
    video = ours(PROMPT, image=image, size=(64, 64), frames=9, steps=6, latents=noise, guide_scale=guide)
    kwargs = dict(guidance_scale=4.5, guidance_scale_2=3.0) if spec.boundary else dict(guidance_scale=5.0)
    with torch.no_grad():
        out = theirs(
            image=image,
            prompt=PROMPT,
            negative_prompt=spec.negative_prompt,
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=6,
            latents=noise.clone(),
            output_type="pt",
            **kwargs,
        ).frames
    compare(video, out)
