"""First-last frame (I2V-A14B with a last image) against diffusers' ``WanImageToVideoPipeline(last_image=...)`` on a
tiny official-layout checkpoint, and the checks of a last image at the boundary."""

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from PIL import Image

from tests.pipelines.test_parity import PROMPT, compare, diffusers_pipe, square_image
from tests.tiny.checkpoint import write_both_layouts
from wanflow.pipelines.pipeline import WanPipeline as Ours
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.tasks import TASKS


@pytest.fixture(scope="module")
def i2v_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("flf")
    write_both_layouts(root, "i2v-A14B", seed=11)
    return root


def test_first_last_frame_matches_diffusers(i2v_checkpoint):
    spec = TASKS["i2v-A14B"]
    ours = Ours.from_pretrained(i2v_checkpoint / "official")
    theirs = diffusers_pipe(WanImageToVideoPipeline, i2v_checkpoint / "diffusers", spec.shift)
    first, last = square_image(seed=0), square_image(seed=5)  # at the output size (diffusers resizes without a crop)
    noise = ours.noise((16, 3, 8, 8), seed=4)
    common = dict(size=(64, 64), frames=9, steps=6, latents=noise, guide_scale=(3.0, 4.5))
    video = ours(PROMPT, image=first, last_image=last, **common)
    with torch.no_grad():
        out = theirs(
            image=first,
            last_image=last,
            prompt=PROMPT,
            negative_prompt=spec.negative_prompt,
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=6,
            latents=noise.clone(),
            output_type="pt",
            guidance_scale=4.5,
            guidance_scale_2=3.0,
        ).frames
    compare(video, out)
    without = ours(PROMPT, image=first, **common)  # the last image changes the video: it is not ignored
    assert (without.frames - video.frames).abs().max() > 0.05


def test_the_last_image_is_encoded_at_the_end_and_marked_in_the_mask(i2v_checkpoint):
    ours = Ours.from_pretrained(i2v_checkpoint / "official")
    seen = []
    encode = ours.encode_image
    ours.encode_image = lambda video: seen.append(video.clone()) or encode(video)
    captured = {}

    def sample(noise, cond, request, hooks=(), start=None):
        captured["y"] = cond.y
        return noise

    ours.sample = sample
    last = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))  # white, half the first's size: resized up
    ours(PROMPT, image=square_image(), last_image=last, size=(64, 64), frames=9, steps=1, seed=0)
    clip = seen[0]  # (1, 3, 9, 64, 64) in [-1, 1]: first image, 7 grey frames, the last image resized
    assert clip.shape == (1, 3, 9, 64, 64)
    assert torch.all(clip[:, :, 1:8] == 0) and torch.allclose(clip[:, :, 8], torch.ones(1, 3, 64, 64))
    mask = captured["y"][0, :4]  # (4, T'=3, 8, 8)
    assert mask[:, 0].eq(1).all() and mask[:, 1].eq(0).all()
    assert mask[:3, 2].eq(0).all() and mask[3, 2].eq(1).all()


def options(**kwargs):
    return GenerateOptions("x", image=square_image(64), frames=9, **kwargs)


def test_a_last_image_of_another_aspect_ratio_is_refused():
    wide = Image.new("RGB", (96, 64))
    with pytest.raises(ValueError, match=r"last image is 96x64 \(aspect 1.500\) but the first is 64x64"):
        resolve(options(last_image=wide), TASKS["i2v-A14B"])
    same_shape = Image.new("RGB", (128, 128))  # another size, the same aspect: resized to the first's
    assert resolve(options(last_image=same_shape), TASKS["i2v-A14B"]).last_image.size == (128, 128)


def test_a_last_image_needs_a_first_image_and_a_task_that_takes_it():
    last = square_image()
    with pytest.raises(ValueError, match="needs a first image"):
        resolve(GenerateOptions("x", last_image=last), _optional_image())
    with pytest.raises(ValueError, match="a last image needs a first image too"):  # not the task's general rule
        resolve(GenerateOptions("x", last_image=last), TASKS["i2v-A14B"])
    with pytest.raises(ValueError, match="ti2v-5B takes no last image"):
        resolve(options(last_image=last), TASKS["ti2v-5B"])
    with pytest.raises(ValueError, match="at least 5 frames"):
        resolve(GenerateOptions("x", image=square_image(), last_image=last, frames=1), TASKS["i2v-A14B"])


def _optional_image():
    """i2v-A14B with an optional image, so that the last-image rule (not the image rule) speaks first."""
    import dataclasses

    return dataclasses.replace(TASKS["i2v-A14B"], image="optional")


def test_comfyuis_image_fit(monkeypatch):
    """``image_fit="crop"`` (ComfyUI's Wan image nodes): the video has the size asked, not the image's aspect within
    its area, and the first and last frames the VAE encodes are ``comfy_fit``'s of the two images at that size, each
    cropped to it whatever its own aspect (the reference's ``area`` fit gives another size, and wants the last image
    of the first's aspect)."""
    from wanflow.io.image import comfy_fit

    pipe = Ours.from_builtin("i2v-A14B")
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 96, 3), dtype=np.uint8))
    tall = Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 40, 3), dtype=np.uint8))
    seen = []
    encode = pipe.encode_image
    monkeypatch.setattr(pipe, "encode_image", lambda clip: seen.append(clip) or encode(clip))
    call = dict(size=(64, 48), frames=9, steps=2, seed=1)
    video = pipe(PROMPT, image=wide, last_image=tall, image_fit="crop", **call).frames
    assert video.shape[-2:] == (48, 64)
    clip = seen[-1]
    assert torch.equal(clip[0, :, 0], comfy_fit(wide, 64, 48)) and torch.equal(clip[0, :, -1], comfy_fit(tall, 64, 48))
    assert pipe(PROMPT, image=wide, **call).frames.shape[-2:] != (48, 64)  # (area: the image's aspect)
    with pytest.raises(ValueError, match="same aspect ratio"):  # (area: the last image fits the first's size)
        pipe(PROMPT, image=wide, last_image=tall, **call)
    with pytest.raises(ValueError, match="image_fit is one of area, crop"):
        pipe(PROMPT, image=wide, image_fit="stretch", **call)


@pytest.mark.parametrize("spec", ["lanczos:30*20:center", "bicubic:32*24:crop:left:8"])
def test_comfyuis_image_scale_before_the_fit(monkeypatch, spec):
    """``image_scale`` (ComfyUI's ImageScale node, or KJNodes' ImageResizeKJv2, before its Wan image node): the first
    and last frames the VAE encodes are ``comfy_fit``'s of the scaled images (i2v-A14B; ti2v-5B's image too), not the
    unscaled ones'; it needs an image and the crop fit."""
    from wanflow.io.image import comfy_fit
    from wanflow.io.resize_nodes import image_scale

    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 96, 3), dtype=np.uint8))
    tall = Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 40, 3), dtype=np.uint8))
    scale = image_scale(spec)
    for task, size, last in (("i2v-A14B", (64, 48), tall), ("ti2v-5B", (64, 64), None)):
        pipe = Ours.from_builtin(task)
        seen, encode = [], pipe.encode_image
        record = lambda clip, encode=encode, seen=seen: seen.append(clip) or encode(clip)  # noqa: E731
        monkeypatch.setattr(pipe, "encode_image", record)
        call = dict(size=size, frames=9, steps=2, seed=1, image_fit="crop")
        pipe(PROMPT, image=wide, last_image=last, image_scale=spec, **call)
        first = seen[-1][0, :, 0]
        assert torch.equal(first, comfy_fit(wide, *size, scale)) and not torch.equal(first, comfy_fit(wide, *size))
        if last is not None:
            assert torch.equal(seen[-1][0, :, -1], comfy_fit(tall, *size, scale))
    with pytest.raises(ValueError, match="give image_fit crop"):
        pipe(PROMPT, image=wide, image_scale="lanczos:30*20", size=(64, 64), frames=9, steps=2)
    with pytest.raises(ValueError, match="image_scale scales the input image"):
        pipe(PROMPT, image_scale="lanczos:30*20", image_fit="crop", size=(64, 64), frames=9, steps=2)
    with pytest.raises(ValueError, match="image_scale is METHOD"):
        pipe(PROMPT, image=wide, image_scale="bislerp:30*20", image_fit="crop", size=(64, 64), frames=9, steps=2)
