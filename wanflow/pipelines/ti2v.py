"""Text(+image) to video (TI2V-5B). With an image: best output size for the area, Lanczos resize and centre crop
(``image_fit="crop"``: the requested size, the image fit as ComfyUI's Wan22ImageToVideoLatent fits it), and the image
latent held in latent frame 0 (its tokens see t = 0) through the whole run (wan22.md §7.3-7.4)."""

from __future__ import annotations

from wanflow.io.image import best_output_size, comfy_fit, resize_center_crop, to_tensor
from wanflow.pipelines import t2v
from wanflow.pipelines.core import Conditioning, Prepared
from wanflow.pipelines.request import Request, latent_frames


def prepare(pipe, request: Request, cond: Conditioning) -> Prepared:
    if request.image is None:
        return t2v.prepare(pipe, request, cond)
    _, s, _ = pipe.vae.cfg.stride
    width, height = request.size
    step = s * pipe.patch[1]
    if request.image_fit == "crop":  # (ComfyUI's Wan22ImageToVideoLatent: the exact size)
        ow, oh = width, height
        image = comfy_fit(request.image, ow, oh, request.image_scale)
    else:
        ow, oh = best_output_size(request.image.width, request.image.height, step, step, width * height)
        image = to_tensor(resize_center_crop(request.image, ow, oh))
    cond.frame0 = pipe.encode_image(image[None, :, None])  # (1, 48, 1, oh/s, ow/s)
    shape = (pipe.vae.cfg.z_dim, latent_frames(request.frames), oh // s, ow // s)
    return Prepared(shape, cond)
