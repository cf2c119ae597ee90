"""Tiny DiT configs and random weights in the official layout."""

from __future__ import annotations

import torch

from wanflow.configs import DiTConfig
from wanflow.models.dit import WanDiT

# 2 heads x head dim 12 (RoPE axes 4/4/4 real dims), 2 blocks: the shapes of diffusers.md's TINY configs.
TINY_T2V = DiTConfig(
    model_type="t2v", in_dim=16, out_dim=16, dim=24, ffn_dim=32, text_dim=32, num_heads=2, num_layers=2
)
TINY_I2V = TINY_T2V.replace(model_type="i2v", in_dim=36)
TINY_TI2V = TINY_T2V.replace(model_type="ti2v", in_dim=48, out_dim=48)


def random_dit_state(cfg: DiTConfig, seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Official-layout weights with every tensor random (norm weights around 1, biases non-zero)."""
    with torch.device("meta"):
        model = WanDiT(cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        values = torch.randn(p.shape, generator=gen) * scale
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            values = 1.0 + values
        state[name] = values
    return state


def random_dit(cfg: DiTConfig, seed: int = 0) -> WanDiT:
    with torch.device("meta"):
        model = WanDiT(cfg)
    model.load_state_dict(random_dit_state(cfg, seed), assign=True)
    return model.eval()
