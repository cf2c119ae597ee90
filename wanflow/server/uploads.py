"""Reading a submission: JSON or a multipart form, a first image and a last one (first-last frame) at most, and a video
file (video to video; multipart only), decoded within the server's limits; and the middleware that caps a request
body's size.

Decoding runs in a worker thread, at most ``Limits.max_decodes`` at once: a 50 KB PNG may hold 4096x4096 pixels
(a second of work), and on the event loop a few of them would stall every other request, ``/health`` included."""

from __future__ import annotations

import base64
import binascii
import io

from anyio import CapacityLimiter, to_thread
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from wanflow.server.schemas import IMAGE_TYPES, VIDEO_TYPES, Limits
from wanflow.server.video_upload import VIDEO_FIELD, Inputs, inspect_video

IMAGE_FIELDS = ("image", "input_reference")
LAST_IMAGE_FIELD = "last_image"  # the last frame beside the first (tasks with ``Task.last_image``)
MAX_FORM_BYTES = 1024 * 1024  # everything in a request besides the images


def max_body(limits: Limits, multipart: bool = False) -> int:
    """The largest request: two images (as base64 in JSON, a third larger) and the form; a multipart form may carry a
    video too (its files go to disk as they arrive; a JSON body is read into memory whole)."""
    return 2 * (limits.max_upload * 4 // 3) + MAX_FORM_BYTES + (limits.max_video_upload if multipart else 0)


def is_multipart(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


class BodyLimit:
    """Answers 413 once a request body passes its limit (``max_body``: a multipart form's, or any other body's), with
    or without a Content-Length header."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received, started = 0, False
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        max_bytes = max_body(self.limits, is_multipart(ctype))

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TooLarge:
            if started:
                raise
            response = JSONResponse({"detail": f"request body over {max_bytes} bytes"}, 413)
            await response(scope, receive, send)


class TooLarge(Exception):
    pass


async def read_submission(request: Request, limits: Limits, decodes: CapacityLimiter) -> tuple[dict, Inputs]:
    """Form fields (multipart, with an image file, a ``last_image`` file and a ``video`` file) or a JSON object
    (images as base64), and the decoded first and last images and the checked video."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = int(request.headers.get("content-length") or 0)
    if length > max_body(limits, is_multipart(ctype)):
        raise HTTPException(
            413, f"request too large; images may be up to {limits.max_upload} bytes, a video {limits.max_video_upload}"
        )
    video = None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields, data, last, video = await _read_form(request, limits)
    elif ctype == "application/json":
        fields, data, last = await _read_json(request, limits)
    else:
        raise HTTPException(415, "send JSON (application/json) or a form (multipart/form-data, for an image upload)")
    if video is not None:
        video = await to_thread.run_sync(inspect_video, video, limits, limiter=decodes)
    return fields, Inputs(await _decoded(data, limits, decodes), await _decoded(last, limits, decodes), video)


async def _decoded(data: bytes | None, limits: Limits, decodes: CapacityLimiter) -> Image.Image | None:
    return None if data is None else await to_thread.run_sync(decode_image, data, limits, limiter=decodes)


async def _read_json(request: Request, limits: Limits) -> tuple[dict, bytes | None, bytes | None]:
    try:
        body = await request.json()
    except RecursionError:  # json's own depth limit: nothing this API takes is nested more than twice
        raise HTTPException(400, "the JSON body is nested too deeply") from None
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    if body.get(VIDEO_FIELD) is not None:
        raise HTTPException(422, f"send the video as a file: a multipart form with a {VIDEO_FIELD!r} file field")
    data = next((body.pop(k) for k in IMAGE_FIELDS if body.get(k) is not None), None)
    last = body.pop(LAST_IMAGE_FIELD, None)
    return body, _base64_or_none(data, limits), _base64_or_none(last, limits, LAST_IMAGE_FIELD)


async def _read_form(request: Request, limits: Limits) -> tuple[dict, bytes | None, bytes | None, bytes | None]:
    try:
        form = await request.form(max_files=3, max_fields=40)
    except (HTTPException, TooLarge):
        raise
    except Exception:
        raise HTTPException(
            400, "the form could not be read (three files at most: image, last_image and video)"
        ) from None
    fields, uploads = {}, {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in (*IMAGE_FIELDS, LAST_IMAGE_FIELD, VIDEO_FIELD):
                hint = "upload the image as 'image' (a last frame as 'last_image', a video as 'video')"
                raise HTTPException(422, f"unexpected file field {key!r}; {hint}")
            slot = {LAST_IMAGE_FIELD: "last", VIDEO_FIELD: "video"}.get(key, "first")
            if slot in uploads:
                what = {"last": "last image", "video": "video"}.get(slot, "image")
                raise HTTPException(422, f"more than one {what} file")
            if slot == "video":
                uploads[slot] = await _read_upload(value, "video", VIDEO_TYPES, limits.max_video_upload)
            else:
                uploads[slot] = await _read_upload(value, "image", IMAGE_TYPES, limits.max_upload)
        elif value != "" or key == "negative_prompt":  # an empty form field is unset, but "" here is no prompt
            if key in fields:
                raise HTTPException(422, f"field {key!r} given twice")
            fields[key] = value
    return fields, uploads.get("first"), uploads.get("last"), uploads.get("video")


async def _read_upload(upload: UploadFile, what: str, types: set[str], max_bytes: int) -> bytes:
    """The file's bytes: one of ``types``, at most ``max_bytes``; ``what`` it is, for the errors."""
    if (upload.content_type or "").lower() not in types:
        raise HTTPException(415, f"{what} type {upload.content_type!r} not accepted; send one of {sorted(types)}")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"the {what} is over the limit of {max_bytes} bytes")
    return data


def _base64_or_none(data: object, limits: Limits, name: str = "image") -> bytes | None:
    return None if data is None else _base64(data, limits, name)


def _base64(data: object, limits: Limits, name: str = "image") -> bytes:
    if not isinstance(data, str):
        raise HTTPException(422, f"{name} must be a base64 string (or a data: URL)")
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if header.split(";")[0][5:].lower() not in IMAGE_TYPES:
            raise HTTPException(415, f"{name} type {header[5:]!r} not accepted; send one of {sorted(IMAGE_TYPES)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{name} is not valid base64") from None
    if len(raw) > limits.max_upload:
        raise HTTPException(413, f"the {name.replace('_', ' ')} is over the limit of {limits.max_upload} bytes")
    return raw


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """The RGB image in ``data`` (blocking: call it in a worker thread); the pixel limit is checked on the header."""
    over = f"over the limit of {limits.max_image_pixels} pixels (width x height)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG", "WEBP"):
                raise HTTPException(415, f"image format {im.format} not accepted; send PNG, JPEG or WebP")
            if im.width * im.height > limits.max_image_pixels:
                raise HTTPException(413, f"the image is {im.width}x{im.height}, {over}")
            return im.convert("RGB")
    except Image.DecompressionBombError:  # Pillow's own, far higher limit: refused before its size is known
        raise HTTPException(413, f"the image is {over}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise HTTPException(422, "the image could not be decoded; send a PNG, JPEG or WebP file") from None
