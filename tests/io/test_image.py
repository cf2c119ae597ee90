"""``load_image``: paths, http(s) URLs (a local server here) and images, turned upright by their EXIF orientation as
diffusers' ``load_image`` and ComfyUI do, with one clear error for what cannot be read."""

import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from wanflow.io.image import load_image


def picture() -> Image.Image:
    """A 6x4 image whose every pixel differs, so that a rotation shows."""
    return Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)


@pytest.fixture()
def served(tmp_path):
    picture().save(tmp_path / "p.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as is, to be shown turned 90 degrees clockwise
    picture().save(tmp_path / "phone.png", exif=exif)
    loaded = load_image(tmp_path / "phone.png")
    assert loaded.size == (4, 6)
    assert np.array_equal(np.asarray(loaded), np.asarray(picture().transpose(Image.Transpose.ROTATE_270)))
    assert np.array_equal(np.asarray(load_image(picture())), np.asarray(picture()))  # no EXIF: unchanged


def test_an_http_url_is_fetched(served):
    assert np.array_equal(np.asarray(load_image(f"{served}/p.png")), np.asarray(picture()))
    with pytest.raises(ValueError, match=r"cannot fetch image http://127\.0\.0\.1:\d+/missing\.png: HTTP Error 404"):
        load_image(f"{served}/missing.png")


def test_clear_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*x\.png"):
        load_image(tmp_path / "x.png")
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match="image not found"):
        load_image(tmp_path / "y.png")


def test_comfyuis_fit_of_an_image():
    """``comfy_fit``: ComfyUI's WanImageToVideo fit (common_upscale, bilinear, centre crop, run as an oracle and saved
    in comfy_fit.json) of LoadImage's floats, then ``2 x - 1`` as its VAE takes them: bit for bit, for a wider, a
    taller, a larger and the same size."""
    import json
    from pathlib import Path

    import torch

    from wanflow.io.image import comfy_fit

    saved = json.loads((Path(__file__).parent / "comfy_fit.json").read_text())
    picture = Image.fromarray(np.array(saved["picture"], dtype=np.uint8).reshape(saved["shape"]))
    for case in saved["cases"]:
        w, h = case["width"], case["height"]
        theirs = torch.tensor(case["pixels"], dtype=torch.float32).reshape(h, w, 3).permute(2, 0, 1)
        assert torch.equal(comfy_fit(picture, w, h), theirs * 2.0 - 1.0), (w, h)


def test_comfyuis_image_scale_before_the_fit():
    """``ImageScale`` then ``comfy_fit``: ComfyUI's ImageScale node (every method: torch's interpolations and lanczos
    through PIL; crop on and off; a side of 0 from the aspect; both 0) and then its Wan node's fit, run as an oracle
    (comfy_scale.json): bit for bit; the scaled size is theirs; without the node the image differs."""
    import json
    from pathlib import Path

    import torch

    from wanflow.io.image import comfy_fit
    from wanflow.io.resize_nodes import ImageScale

    saved = json.loads((Path(__file__).parent / "comfy_scale.json").read_text())
    picture = Image.fromarray(np.array(saved["picture"], dtype=np.uint8).reshape(saved["shape"]))
    x = torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    for case in saved["cases"]:
        scale = ImageScale.parse(f"{case['method']}:{case['width']}*{case['height']}:{case['crop']}")
        assert list(scale.apply(x).shape[2:]) == case["scaled"]
        (w, h), text = case["video"], str(scale)
        theirs = torch.tensor(case["pixels"], dtype=torch.float32).reshape(h, w, 3).permute(2, 0, 1)
        assert torch.equal(comfy_fit(picture, w, h, scale), theirs * 2.0 - 1.0), text
        if case["width"] or case["height"]:
            assert not torch.equal(comfy_fit(picture, w, h), theirs * 2.0 - 1.0), text
    for bad in ("bislerp:64*64", "lanczos:64", "lanczos:64*x", "area:64*64:left"):
        with pytest.raises(ValueError, match="image_scale is METHOD:W"):
            ImageScale.parse(bad)


def test_kjnodes_resize_before_the_fit():
    """KJNodes' ImageResizeKJv2 (and its ImagePadKJ), run as an oracle (kj_resize.json): for each mode (the padding
    ones with pad colours of three forms), position, divisible_by and method, its size outputs and its image are
    wanflow's bit for bit; the spec round-trips; bad specs are named."""
    import base64
    import json
    from pathlib import Path

    import torch

    from wanflow.io.resize_nodes import ImageResize, ImageScale, image_scale

    saved = json.loads((Path(__file__).parent / "kj_resize.json").read_text())
    pictures = [np.frombuffer(base64.b64decode(p["pixels"]), np.uint8).reshape(p["shape"]) for p in saved["pictures"]]
    for case in saved["cases"]:
        resize = ImageResize(case["method"], case["width"], case["height"], case["mode"], case["position"],
                             case["divisible_by"], case["pad_color"])  # fmt: skip
        assert str(image_scale(str(resize))) == str(resize)  # (the colour is written for the padding modes alone)
        picture = pictures[case["picture"]]
        x = torch.from_numpy(picture.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        size = (case["out_width"], case["out_height"])
        assert resize.size(picture.shape[1], picture.shape[0]) == size, str(resize)
        theirs = np.frombuffer(base64.b64decode(case["pixels"]), "<f4").reshape(size[1], size[0], 3)
        assert torch.equal(resize.apply(x)[0], torch.from_numpy(theirs.copy()).permute(2, 0, 1)), str(resize)
    modes = {"stretch", "resize", "crop", "total_pixels", "pad", "pad_edge", "pad_edge_pixel", "pillarbox_blur"}
    assert {c["mode"] for c in saved["cases"]} == modes
    assert image_scale("lanczos:832*480") == ImageScale("lanczos", 832, 480)
    assert image_scale("area:64*64:resize") == ImageResize("area", 64, 64, "resize", "center", 2)
    for bad in (
        "lanczos:64*64:letterbox",
        "nvidia_rtx_vsr:64*64:crop",
        "lanczos:64*64:crop:middle",
        "lanczos:64*64:crop:center:x",
        "lanczos:64:crop",
        "lanczos:0*64:pad",
        "lanczos:64*64:pad:center:2:zebra-ish",
    ):
        with pytest.raises(ValueError, match=r"KJNodes resize is METHOD:W\*H:MODE|give both sides|a pad colour is"):
            image_scale(bad)
    with pytest.raises(ValueError, match="image_scale is METHOD:W"):
        image_scale("lanczos:64")
    with pytest.raises(ValueError, match="makes nothing"):
        ImageResize("area", 3, 3, "stretch", divisible_by=4).size(10, 10)


def test_image_size_reads_the_header_as_load_image_turns_it(tmp_path):
    """An EXIF orientation of 6 (a quarter turn) swaps the sides, as ``load_image`` does; none keeps them."""
    from wanflow.io.image import ORIENTATION, image_size

    picture = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    for orientation, name in ((6, "turned.jpg"), (1, "upright.jpg")):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        picture.save(tmp_path / name, exif=exif)
        assert (
            image_size(tmp_path / name)
            == load_image(tmp_path / name).size
            == ((20, 30) if orientation == 6 else (30, 20))
        )
