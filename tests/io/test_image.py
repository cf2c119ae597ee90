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
