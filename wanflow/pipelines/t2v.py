"""Text to video (T2V-A14B): noise of the requested size, no extra conditioning."""

from __future__ import annotations

from wanflow.pipelines.core import Conditioning, Prepared
from wanflow.pipelines.request import Request, latent_frames


def prepare(pipe, request: Request, cond: Conditioning) -> Prepared:
    width, height = request.size
    _, s, _ = pipe.vae.cfg.stride
    shape = (pipe.vae.cfg.z_dim, latent_frames(request.frames), height // s, width // s)
    return Prepared(shape, cond)
