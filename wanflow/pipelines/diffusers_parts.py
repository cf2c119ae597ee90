"""diffusers' components as wanflow holds them: what ``from_pretrained`` takes beside the checkpoint (``LoadParts``),
the DiT and VAE as ``pipe.transformer`` / ``pipe.vae`` read in diffusers (their ``config``, ``compile_repeated_blocks``,
``enable_tiling``), and ``save_pretrained``'s shard sizes."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import torch

from wanflow.checkpoints.maps.dit import TEXT_LEN_KEY, dit_config_to_diffusers
from wanflow.checkpoints.maps.vae import vae_config_to_diffusers
from wanflow.configs import DiffusersConfig
from wanflow.runtime.compile import compile_blocks
from wanflow.sampling.diffusers_schedulers import scheduler_family

VAE_TILE = 32  # latent pixels per tile of ``enable_vae_tiling`` (256 pixels with the Wan 2.1 VAE, 512 with 2.2's)


@dataclass
class LoadParts:
    """What diffusers' ``from_pretrained`` takes beside the checkpoint (and ``device_map``, a device name: the
    ``device`` runtime option): modules in place of its components (``vae``:
    diffusers' ``AutoencoderKLWan`` or a ``WanVAE``, kept in its dtype; ``transformer`` / ``transformer_2``: DiTs,
    ``checkpoints.load.dit_from_module``; ``text_encoder`` / ``tokenizer``: transformers' umT5 and its tokenizer, used
    as they are), a ``scheduler`` (``pipe.scheduler``) and ``boundary_ratio`` (the experts switch at
    ``t >= boundary_ratio * 1000``)."""

    vae: Any = None
    transformers: dict[str, torch.nn.Module] = dataclasses.field(default_factory=dict)
    scheduler: Any = None
    boundary_ratio: float | None = None
    text_encoder: Any = None  # transformers' UMT5EncoderModel, used as it is
    tokenizer: Any = None  # transformers' tokenizer, used as it is

    @classmethod
    def take(cls, options: dict[str, Any]) -> LoadParts:
        """The parts among ``options`` (removed from them), checked before any weight is read; a VAE module sets
        ``vae_dtype`` to its dtype unless it is given."""
        from wanflow.checkpoints.load import vae_from_module

        device_map = options.pop("device_map", None)  # diffusers' (and the Hub's "use this model" snippet's)
        if device_map is not None:
            if not isinstance(device_map, (str, torch.device)) or str(device_map) in ("auto", "balanced"):
                raise ValueError(
                    f"device_map={device_map!r}: a pipeline runs on one device here (device_map='cuda', or device=); "
                    "several GPUs share a video under torchrun (README, 'Several GPUs and machines')"
                )
            if options.get("device") is not None:
                raise ValueError("the device is given twice, as device and as device_map: pass one of them")
            options["device"] = device_map
        vae = options.pop("vae", None)
        vae = vae_from_module(vae) if vae is not None else None
        if vae is not None and options.get("vae_dtype") is None:
            options["vae_dtype"] = vae.dtype
        transformers = {name: options.pop(name, None) for name in ("transformer", "transformer_2")}
        scheduler = options.pop("scheduler", None)
        if scheduler is not None:
            scheduler_family(scheduler)
        ratio = options.pop("boundary_ratio", None)
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
            raise ValueError(f"boundary_ratio is a fraction of the timesteps in (0, 1], got {ratio!r}")
        given = {name: module for name, module in transformers.items() if module is not None}
        text = {name: options.pop(name, None) for name in ("text_encoder", "tokenizer")}
        return cls(vae, given, scheduler, None if ratio is None else float(ratio), **text)

    def check(self, layout: Any) -> None:
        """Refuse what does not fit the checkpoint, before its weights are read."""
        if self.boundary_ratio is not None and not layout.is_moe:
            raise ValueError("boundary_ratio: this checkpoint has one DiT, so no switch between experts")

    def task(self, task: Any) -> Any:
        """``task`` with ``boundary_ratio`` as its switch between experts."""
        return task if self.boundary_ratio is None else task.with_overrides({"boundary": self.boundary_ratio})


def with_config(module: torch.nn.Module) -> torch.nn.Module:
    """A DiT or VAE with its settings in diffusers' names as ``module.config`` (as diffusers' models carry theirs:
    ``pipe.vae.config.latents_std``, ``pipe.transformer.config.num_layers``), read from its ``cfg``; a DiT also
    answers diffusers' ``compile_repeated_blocks(**torch_compile_options)`` with wanflow's regional compilation
    (``runtime.compile.compile_blocks``: each block compiled in place, the same graph for all)."""
    from wanflow.models.vae import WanVAE

    is_vae = isinstance(module, WanVAE)
    to_diffusers = vae_config_to_diffusers if is_vae else dit_config_to_diffusers
    config = {k: v for k, v in to_diffusers(module.cfg).items() if k != TEXT_LEN_KEY}
    module.config = DiffusersConfig(config)  # (plain attributes: no parameter, no buffer)
    if not is_vae:
        module.compile_repeated_blocks = functools.partial(compile_blocks, module)
    return module


def vae_methods(vae: torch.nn.Module, pipe: Any) -> None:
    """diffusers' ``pipe.vae.enable_tiling()`` / ``disable_tiling()`` on wanflow's VAE: the pipeline's exact tiled
    decode (``enable_vae_tiling``; a ``tile_sample_min_height`` / ``_width`` in pixels sets the tile, the strides are
    not needed: the tiles do not blend); ``enable_slicing()`` / ``disable_slicing()`` split a batch of videos, and a
    call makes one, so they change nothing."""
    stride = vae.cfg.stride[1]

    def enable_tiling(
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        sizes = [size for size in (tile_sample_min_height, tile_sample_min_width) if size is not None]
        pipe.enable_vae_tiling(max(1, min(sizes) // stride) if sizes else VAE_TILE)

    vae.enable_tiling = enable_tiling
    vae.disable_tiling = pipe.disable_vae_tiling
    vae.enable_slicing = vae.disable_slicing = lambda: None


def shard_bytes(size: int | str) -> int:
    """diffusers' ``max_shard_size``: bytes, or a string such as "10GB", "500MB" (powers of 1000; "GiB": 1024)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), re.IGNORECASE)
    if match is None:
        raise ValueError(f'max_shard_size is a number of bytes or a size such as "10GB", got {size!r}')
    unit = match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return int(float(match.group(1)) * base ** (" KMG".index(unit[0])))
