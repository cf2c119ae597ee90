"""Tiny umT5 config and random weights in the official layout."""

from __future__ import annotations

import math

import torch

from wanflow.configs import T5Config

TINY_T5 = T5Config(
    vocab_size=120, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32, text_len=32
)


def official_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    """The official checkpoint's keys and shapes (wan22.md §6.4), written out independently of the key map."""
    shapes = {"token_embedding.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        shapes[b + "norm1.weight"] = (cfg.dim,)
        for p in "qkv":
            shapes[b + f"attn.{p}.weight"] = (cfg.dim_attn, cfg.dim)
        shapes[b + "attn.o.weight"] = (cfg.dim, cfg.dim_attn)
        shapes[b + "norm2.weight"] = (cfg.dim,)
        shapes[b + "ffn.gate.0.weight"] = (cfg.dim_ffn, cfg.dim)
        shapes[b + "ffn.fc1.weight"] = (cfg.dim_ffn, cfg.dim)
        shapes[b + "ffn.fc2.weight"] = (cfg.dim, cfg.dim_ffn)
        shapes[b + "pos_embedding.embedding.weight"] = (cfg.num_buckets, cfg.num_heads)
    shapes["norm.weight"] = (cfg.dim,)
    return shapes


def random_official_state(cfg: T5Config, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes(cfg).items():
        values = torch.randn(shape, generator=gen)
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            values = 1.0 + 0.1 * values
        elif "pos_embedding" in name or name == "token_embedding.weight":
            values = 0.5 * values
        else:
            values = values / math.sqrt(shape[1])  # Linear(in=shape[1]): keep activations O(1)
        state[name] = values
    return state
