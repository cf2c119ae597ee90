"""Model configurations as dataclasses, and the published Wan 2.2 variants.

Conventions used across wanflow: time runs from 1 (noise) to 0 (data), ``x_t = (1 - t) x0 + t eps`` and the
DiT predicts the velocity ``v = eps - x0``. Sizes are (width, height) at the user boundary and (T, H, W) inside.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# The experts of a checkpoint, by the noise levels they serve: the two of an A14B model, or the one of a dense model.
HIGH, LOW, DENSE = "high", "low", "dense"
EXPERTS = (HIGH, LOW)


def diffusers_components(is_moe: bool) -> dict[str, str]:
    """diffusers' component names -> the experts: ``transformer`` is the high-noise expert (a dense model's one DiT),
    ``transformer_2`` the low-noise one."""
    return {"transformer": HIGH, "transformer_2": LOW} if is_moe else {"transformer": DENSE}


class DiffusersConfig(dict):
    """Settings in diffusers' names (a scheduler's, a model's ``config``), read as a dict or by attribute
    (``config.patch_size``), as diffusers' ``FrozenDict``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def check_fields(cfg: object, counts: tuple[str, ...] = (), positives: tuple[str, ...] = ()) -> None:
    """Types and ranges of a config's fields, with the field's name in the message: a ``config.json`` may hold
    anything (``num_heads: 0``, ``eps: "x"``), and a checkpoint loader adds the file's name. ``counts`` are whole
    numbers >= 1; ``positives`` are finite real numbers > 0."""
    for name in counts:
        check_count(name, getattr(cfg, name))
    for name in positives:
        value = getattr(cfg, name)
        if not _is_real(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_count(name: str, value: object, least: int = 1) -> int:
    """``value`` when it is a whole number >= ``least``; else a ValueError that names the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    return value


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_tuple(name: str, value: object, length: int | None = None) -> None:
    """A tuple (of ``length`` items when given); the items are checked by the caller."""
    if not isinstance(value, tuple) or (length is not None and len(value) != length):
        size = f" of {length}" if length is not None else ""
        raise ValueError(f"{name} must be a list{size}, got {value!r}")


@dataclass(frozen=True)
class DiTConfig:
    """The Wan diffusion transformer (official ``WanModel``); field names follow its ``config.json``."""

    model_type: str = "t2v"  # t2v | i2v | ti2v: which conditioning the checkpoint was trained with
    in_dim: int = 16  # input latent channels (i2v: 16 noise + 4 mask + 16 image latent = 36)
    out_dim: int = 16  # predicted velocity channels
    dim: int = 5120  # hidden width D
    ffn_dim: int = 13824  # FFN inner width
    freq_dim: int = 256  # width of the sinusoidal timestep features
    text_dim: int = 4096  # width of the text encoder output
    text_len: int = 512  # context tokens (zero-padded)
    num_heads: int = 40
    num_layers: int = 40
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the latent per token
    eps: float = 1e-6  # epsilon of every LayerNorm / RMSNorm in the DiT
    rope_theta: float = 10000.0
    rope_max_len: int = 1024  # positions per axis in the reference RoPE table

    def __post_init__(self) -> None:
        if not isinstance(self.model_type, str):
            raise ValueError(f"model_type must be a string (t2v, i2v or ti2v), got {self.model_type!r}")
        counts = ("in_dim", "out_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "num_heads", "num_layers")
        check_fields(self, (*counts, "rope_max_len"), ("eps", "rope_theta"))
        _check_tuple("patch_size", self.patch_size, 3)
        for i, n in enumerate(self.patch_size):
            check_count(f"patch_size[{i}]", n)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    # Keys of the official config.json that the official WanModel reads (the rest take constructor defaults).
    # ``text_dim`` is ignored by the reference (always 4096) and absent from the published files; wanflow reads it
    # when present so that small models with a small text encoder use the same layout.
    _JSON_KEYS = (
        "model_type",
        "in_dim",
        "out_dim",
        "dim",
        "ffn_dim",
        "freq_dim",
        "text_len",
        "num_heads",
        "num_layers",
        "eps",
        "text_dim",
    )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DiTConfig:
        """Build from an official ``config.json`` (unknown keys ignored, as the reference does)."""
        if not isinstance(data, dict):
            raise ValueError(f"a DiT config must be a JSON object, got {type(data).__name__}")
        kwargs = {k: data[k] for k in cls._JSON_KEYS if k in data}
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """The official ``config.json`` content for this config."""
        return {
            "_class_name": "WanModel",
            "_diffusers_version": "0.31.0",
            **{k: getattr(self, k) for k in self._JSON_KEYS},
        }

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split())


# Per-channel statistics of the published VAEs' latents (the normalisation z = (mu - mean) / std).
WAN21_LATENT_MEAN = _floats(
    """
    -0.7571 -0.7089 -0.9113 0.1075 -0.1745 0.9653 -0.1517 1.5508 0.4134 -0.0715 0.5517 -0.3632 -0.1922
    -0.9497 0.2503 -0.2921
    """
)
WAN21_LATENT_STD = _floats(
    """
    2.8184 1.4541 2.3275 2.6558 1.2196 1.7708 2.6052 2.0743 3.2687 2.1526 2.8652 1.5579 1.6382 1.1253 2.8251
    1.9160
    """
)
WAN22_LATENT_MEAN = _floats(
    """
    -0.2289 -0.0052 -0.1323 -0.2339 -0.2799 0.0174 0.1838 0.1557 -0.1382 0.0542 0.2813 0.0891 0.1570 -0.0098
    0.0375 -0.1825 -0.2246 -0.1207 -0.0698 0.5109 0.2665 -0.2108 -0.2158 0.2502 -0.2055 -0.0322 0.1109
    0.1567 -0.0729 0.0899 -0.2799 -0.1230 -0.0313 -0.1649 0.0117 0.0723 -0.2839 -0.2083 -0.0520 0.3748
    0.0152 0.1957 0.1433 -0.2944 0.3573 -0.0548 -0.1681 -0.0667
    """
)
WAN22_LATENT_STD = _floats(
    """
    0.4765 1.0364 0.4514 1.1677 0.5313 0.4990 0.4818 0.5013 0.8158 1.0344 0.5894 1.0901 0.6885 0.6165 0.8454
    0.4978 0.5759 0.3523 0.7135 0.6804 0.5833 1.4146 0.8986 0.5659 0.7069 0.5338 0.4889 0.4917 0.4069 0.4999
    0.6866 0.4093 0.5709 0.6065 0.6415 0.4944 0.5726 1.2042 0.5458 1.6887 0.3971 1.0600 0.3943 0.5537 0.5444
    0.4089 0.7468 0.7744
    """
)


@dataclass(frozen=True)
class VAEConfig:
    """The causal 3D VAE. ``version`` picks the architecture: "2.1" (4x8x8, z 16) or "2.2" (4x16x16, z 48)."""

    version: str = "2.1"
    base_dim: int = 96  # encoder base width (2.2: 160)
    decoder_dim: int = 96  # decoder base width (2.1: same as encoder; 2.2: 256)
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    patch_size: int = 1  # pixel patchify before the encoder (2.2: 2)
    latents_mean: tuple[float, ...] = WAN21_LATENT_MEAN  # per-channel normalisation: z = (mu - mean) / std
    latents_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self) -> None:
        if self.version not in ("2.1", "2.2"):
            raise ValueError(f"unknown VAE version {self.version!r}; expected '2.1' or '2.2'")
        check_fields(self, ("base_dim", "decoder_dim", "z_dim", "num_res_blocks", "patch_size"))
        _check_tuple("dim_mult", self.dim_mult)
        if not self.dim_mult:
            raise ValueError("dim_mult must list at least one stage")
        for i, m in enumerate(self.dim_mult):
            check_count(f"dim_mult[{i}]", m)
        _check_tuple("temporal_downsample", self.temporal_downsample, len(self.dim_mult) - 1)
        if not all(isinstance(t, bool) for t in self.temporal_downsample):
            raise ValueError(f"temporal_downsample must hold true/false values, got {self.temporal_downsample!r}")
        for name in ("latents_mean", "latents_std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.z_dim:
                raise ValueError(f"latent statistics must have z_dim={self.z_dim} entries ({name})")
            if not all(_is_real(v) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must hold z_dim={self.z_dim} finite numbers")
        if min(self.latents_std) <= 0:
            raise ValueError(f"latents_std must be positive, got {min(self.latents_std)}")

    @property
    def stride(self) -> tuple[int, int, int]:
        """(t, h, w) compression from pixels to latents."""
        t = 2 ** sum(self.temporal_downsample)
        s = 2 ** (len(self.dim_mult) - 1) * self.patch_size
        return (t, s, s)

    def replace(self, **changes: Any) -> VAEConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class T5Config:
    """The umT5 encoder (encoder only, per-layer relative position buckets)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096  # num_heads * head dim
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512  # tokens after padding / truncation

    def __post_init__(self) -> None:
        check_count("vocab_size", self.vocab_size, least=0)  # 0: a recipe's placeholder until its tokenizer is built
        counts = ("dim", "num_heads", "dim_attn", "dim_ffn", "num_layers", "num_buckets", "max_distance", "text_len")
        check_fields(self, counts, ("eps",))
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)


DIT_CONFIGS: dict[str, DiTConfig] = {
    "t2v-A14B": DiTConfig(
        model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40
    ),
    "i2v-A14B": DiTConfig(
        model_type="i2v", in_dim=36, out_dim=16, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40
    ),
    "ti2v-5B": DiTConfig(
        model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30
    ),
}

VAE_CONFIGS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    "wan2.2": VAEConfig(
        version="2.2",
        base_dim=160,
        decoder_dim=256,
        z_dim=48,
        patch_size=2,
        latents_mean=WAN22_LATENT_MEAN,
        latents_std=WAN22_LATENT_STD,
    ),
}

UMT5_XXL = T5Config()

__all__ = [
    "DENSE",
    "DIT_CONFIGS",
    "EXPERTS",
    "HIGH",
    "LOW",
    "UMT5_XXL",
    "VAE_CONFIGS",
    "DiTConfig",
    "T5Config",
    "VAEConfig",
]
