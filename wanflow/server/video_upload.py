"""What a submission uploads beside its fields (``Inputs``), and the video of video to video: a multipart file field
``video`` (MP4, WebM or QuickTime within the server's byte limit, read by ``uploads``), decoded once in a worker
thread to check it (a file PyAV reads, frames within the pixel limit, no more frames than the frame limit decodes)
without keeping its frames: the job's worker reads the stored file."""

from __future__ import annotations

import io
from dataclasses import dataclass

from fastapi import HTTPException
from PIL import Image

from wanflow.io.clip import decoded_frames
from wanflow.server.schemas import Limits

VIDEO_FIELD = "video"


@dataclass(frozen=True)
class UploadedVideo:
    data: bytes  # the file as sent, stored for the worker
    first: Image.Image  # its first frame (RGB)
    frames: int  # how many frames it has, counted up to the frame limit + 1

    def stand_in(self) -> list[Image.Image]:
        """What the submission's checks read in place of the frames: as many, of the first one's size (one image)."""
        return [self.first] * self.frames


@dataclass(frozen=True)
class Inputs:
    """A submission's uploads: the first image, the last one (first-last frame), the video (video to video)."""

    image: Image.Image | None = None
    last: Image.Image | None = None
    video: UploadedVideo | None = None

    def any(self) -> bool:
        return any(x is not None for x in (self.image, self.last, self.video))


NO_INPUTS = Inputs()


def inspect_video(data: bytes, limits: Limits) -> UploadedVideo:
    """The video's first frame and frame count (blocking: call it in a worker thread); 422 for a file that is not a
    video, 413 for frames over the pixel limit."""
    first, count = None, 0
    try:
        for frame in decoded_frames(io.BytesIO(data), limits.max_frames + 1):
            if frame.width * frame.height > limits.max_image_pixels:
                over = f"over the limit of {limits.max_image_pixels} pixels (width x height)"
                raise HTTPException(413, f"the video's frames are {frame.width}x{frame.height}, {over}")
            first = first or frame.to_image().convert("RGB")
            count += 1
    except ValueError:
        raise HTTPException(422, "the video could not be decoded; send an MP4, WebM or QuickTime file") from None
    if first is None:
        raise HTTPException(422, "the video has no frames")
    return UploadedVideo(data, first, count)
