"""VAE keys: official ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` (also wanflow's module names) <-> diffusers
``AutoencoderKLWan``; the VAE config read from tensor shapes, and to / from the diffusers ``config.json``.

The two layouts number blocks differently (official 2.1 decoder: one flat list; diffusers: stages of resnets plus an
upsampler), so the rules are generated from the config: they are still plain data, one rule per module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from wanflow.checkpoints.keymap import KeyMap
from wanflow.configs import (
    WAN21_LATENT_MEAN,
    WAN21_LATENT_STD,
    WAN22_LATENT_MEAN,
    WAN22_LATENT_STD,
    VAEConfig,
    check_count,
)

Rules = list[tuple[str, str]]

# official ResidualBlock -> diffusers WanResidualBlock
_RESNET = (
    ("residual.0.", "norm1."),
    ("residual.2.", "conv1."),
    ("residual.3.", "norm2."),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
)


def _resnet(official: str, diffusers: str) -> Rules:
    return [(official + a, diffusers + b) for a, b in _RESNET]


def _ends(side: str) -> Rules:
    """conv1, middle and head of the encoder or decoder."""
    return [
        (f"{side}.conv1.", f"{side}.conv_in."),
        *_resnet(f"{side}.middle.0.", f"{side}.mid_block.resnets.0."),
        (f"{side}.middle.1.", f"{side}.mid_block.attentions.0."),
        *_resnet(f"{side}.middle.2.", f"{side}.mid_block.resnets.1."),
        (f"{side}.head.0.", f"{side}.norm_out."),
        (f"{side}.head.2.", f"{side}.conv_out."),
    ]


def _blocks_21(cfg: VAEConfig) -> Rules:
    """Flat official lists; the encoder keeps its indices, the decoder regroups into stages."""
    rules: Rules = []
    stages, k = len(cfg.dim_mult), 0
    for i in range(stages):  # encoder: [res] * num_res_blocks + [resample], last stage without resample
        for _ in range(cfg.num_res_blocks):
            rules += _resnet(f"encoder.downsamples.{k}.", f"encoder.down_blocks.{k}.")
            k += 1
        if i < stages - 1:
            rules.append((f"encoder.downsamples.{k}.", f"encoder.down_blocks.{k}."))  # resample.1, time_conv
            k += 1
    k = 0
    for i in range(stages):  # decoder: [res] * (num_res_blocks + 1) + [resample]
        for j in range(cfg.num_res_blocks + 1):
            rules += _resnet(f"decoder.upsamples.{k}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            k += 1
        if i < stages - 1:
            rules.append((f"decoder.upsamples.{k}.", f"decoder.up_blocks.{i}.upsamplers.0."))
            k += 1
    return rules


def _blocks_22(cfg: VAEConfig) -> Rules:
    """Nested official stages ``downsamples.{i}.downsamples.{j}`` / ``upsamples.{i}.upsamples.{j}``."""
    n = cfg.num_res_blocks
    rules: Rules = []
    for j in range(n):
        rules += _resnet(f"encoder.downsamples.{{}}.downsamples.{j}.", f"encoder.down_blocks.{{}}.resnets.{j}.")
    rules.append((f"encoder.downsamples.{{}}.downsamples.{n}.", "encoder.down_blocks.{}.downsampler."))
    for j in range(n + 1):
        rules += _resnet(f"decoder.upsamples.{{}}.upsamples.{j}.", f"decoder.up_blocks.{{}}.resnets.{j}.")
    rules.append((f"decoder.upsamples.{{}}.upsamples.{n + 1}.", "decoder.up_blocks.{}.upsampler."))
    return rules


def vae_keymap(cfg: VAEConfig) -> KeyMap:
    """``forward``: official -> diffusers ``AutoencoderKLWan``; ``reverse``: back."""
    blocks = _blocks_21(cfg) if cfg.version == "2.1" else _blocks_22(cfg)
    rules = [("conv1.", "quant_conv."), ("conv2.", "post_quant_conv."), *_ends("encoder"), *_ends("decoder"), *blocks]
    return KeyMap(f"VAE {cfg.version}", tuple(rules))


def default_latent_stats(z_dim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The published statistics for z 16 (Wan 2.1) and z 48 (Wan 2.2); zeros / ones (no normalisation) otherwise."""
    if z_dim == len(WAN21_LATENT_MEAN):
        return WAN21_LATENT_MEAN, WAN21_LATENT_STD
    if z_dim == len(WAN22_LATENT_MEAN):
        return WAN22_LATENT_MEAN, WAN22_LATENT_STD
    return (0.0,) * z_dim, (1.0,) * z_dim


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"not a Wan VAE state dict in the official layout: no {key!r}")
    return tuple(state[key].shape)


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` in keys ``{prefix}{i}.…``."""
    found = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return sorted(found)


def _stage(state: Mapping[str, torch.Tensor], prefix: str, blocks: list[int]) -> tuple[int, int, bool]:
    """(width, residual blocks, temporal downsample) of one encoder stage made of ``{prefix}{k}`` for k in blocks."""
    res = [k for k in blocks if f"{prefix}{k}.residual.6.weight" in state]
    if not res:
        raise ValueError(f"not a Wan VAE state dict: encoder stage {prefix}{blocks} has no residual block")
    width = _shape(state, f"{prefix}{res[-1]}.residual.6.weight")[0]
    temporal = any(f"{prefix}{k}.time_conv.weight" in state for k in blocks)
    return width, len(res), temporal


def _encoder_stages(state: Mapping[str, torch.Tensor], version: str) -> list[tuple[int, int, bool]]:
    """Per encoder stage: (width, residual blocks, temporal downsample)."""
    if version == "2.2":
        prefixes = [f"encoder.downsamples.{i}.downsamples." for i in _indices(state, "encoder.downsamples.")]
        return [_stage(state, p, _indices(state, p)) for p in prefixes]
    stages, current = [], []
    for k in _indices(state, "encoder.downsamples."):  # 2.1: one flat list, a resample closes a stage
        current.append(k)
        if f"encoder.downsamples.{k}.resample.1.weight" in state:
            stages.append(_stage(state, "encoder.downsamples.", current))
            current = []
    return [*stages, _stage(state, "encoder.downsamples.", current)]


def _ratio(width: int, base: int, what: str) -> int:
    if width % base:
        raise ValueError(f"{what} width {width} is not a multiple of the base width {base}")
    return width // base


def vae_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> VAEConfig:
    """The config of an official-layout VAE, from key names and tensor shapes only.

    Version 2.2 when the encoder has nested stages (``encoder.downsamples.0.downsamples.*``). The latent statistics
    are not stored in the checkpoint: they default to the published ones for z 16 / z 48 and to zeros / ones
    (no normalisation) for any other ``z_dim``.
    """
    version = "2.2" if any(k.startswith("encoder.downsamples.0.downsamples.") for k in state) else "2.1"
    base_dim, in_dim = _shape(state, "encoder.conv1.weight")[:2]
    patch = math.isqrt(in_dim // 3)
    if 3 * patch * patch != in_dim:
        raise ValueError(f"encoder.conv1 takes {in_dim} channels, which is not 3 * patch_size**2")
    stages = _encoder_stages(state, version)
    if len({n for _, n, _ in stages}) != 1:
        raise ValueError(f"encoder stages have different numbers of residual blocks: {[n for _, n, _ in stages]}")
    dim_mult = tuple(_ratio(w, base_dim, f"encoder stage {i}") for i, (w, _, _) in enumerate(stages))
    z_dim = _shape(state, "conv2.weight")[0]
    mean, std = default_latent_stats(z_dim)
    return VAEConfig(
        version=version,
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=stages[0][1],
        decoder_dim=_ratio(_shape(state, "decoder.conv1.weight")[0], dim_mult[-1], "decoder.conv1"),
        temporal_downsample=tuple(t for _, _, t in stages[:-1]),
        patch_size=patch,
        latents_mean=mean,
        latents_std=std,
    )


def vae_config_to_diffusers(cfg: VAEConfig) -> dict[str, Any]:
    """``AutoencoderKLWan`` config (the diffusers ``vae/config.json``) for this VAE."""
    pixels = 3 * cfg.patch_size**2
    return {
        "_class_name": "AutoencoderKLWan",
        "base_dim": cfg.base_dim,
        "decoder_base_dim": cfg.decoder_dim,
        "z_dim": cfg.z_dim,
        "dim_mult": list(cfg.dim_mult),
        "num_res_blocks": cfg.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(cfg.temporal_downsample),
        "dropout": 0.0,
        "latents_mean": list(cfg.latents_mean),
        "latents_std": list(cfg.latents_std),
        "is_residual": cfg.version == "2.2",
        "in_channels": pixels,
        "out_channels": pixels,
        "patch_size": cfg.patch_size if cfg.patch_size > 1 else None,
        "scale_factor_temporal": cfg.stride[0],
        "scale_factor_spatial": cfg.stride[1],
    }


def vae_config_from_diffusers(data: Mapping[str, Any]) -> VAEConfig:
    """Inverse of ``vae_config_to_diffusers``; missing keys take ``AutoencoderKLWan``'s defaults."""
    if data.get("attn_scales"):
        raise ValueError(f"attention at scales {data['attn_scales']} is not part of any Wan VAE; not supported")
    base = check_count("base_dim", data.get("base_dim", 96))
    z_dim = check_count("z_dim", data.get("z_dim", 16))
    patch = check_count("patch_size", data.get("patch_size") or 1)
    for key in ("in_channels", "out_channels"):
        if data.get(key, 3 * patch * patch) != 3 * patch * patch:
            raise ValueError(f"{key}={data[key]} does not match RGB with patch_size {patch} ({3 * patch * patch})")
    mean, std = default_latent_stats(z_dim)  # for z 16 these are also diffusers' defaults
    return VAEConfig(
        version="2.2" if data.get("is_residual", False) else "2.1",
        base_dim=base,
        decoder_dim=data.get("decoder_base_dim") or base,
        z_dim=z_dim,
        dim_mult=_tuple(data.get("dim_mult", (1, 2, 4, 4))),
        num_res_blocks=data.get("num_res_blocks", 2),
        temporal_downsample=_tuple(data.get("temperal_downsample", (False, True, True))),
        patch_size=patch,
        latents_mean=_tuple(data.get("latents_mean", mean)),
        latents_std=_tuple(data.get("latents_std", std)),
    )


def _tuple(value: Any) -> Any:
    """A JSON list as a tuple; anything else as it is, for ``VAEConfig`` to name the field that is wrong."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
