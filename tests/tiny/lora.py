"""LoRA files in every dialect for the tiny DiTs, with the dense deltas they mean computed here, independently of
wanflow's LoRA engine (its key maps are not used: the names below are written out by hand).

``make_lora(fmt, cfg, seed)`` returns (state dict to write with safetensors, {official parameter: dense delta}).
"""

from __future__ import annotations

import torch

from wanflow.configs import DiTConfig

# Block modules every format targets, official name -> diffusers name.
BLOCK_MODULES = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
RANK = 4
ALPHA = 2.0

# format -> (key of module m in block i, (down, up) role names, alpha?): the low-rank formats.
LOW_RANK = {
    "wan": (lambda i, m, d: f"diffusion_model.blocks.{i}.{m}", ("lora_down.weight", "lora_up.weight"), True),
    "wan-ab": (lambda i, m, d: f"diffusion_model.blocks.{i}.{m}", ("lora_A.weight", "lora_B.weight"), True),
    "kohya": (
        lambda i, m, d: f"lora_unet_blocks_{i}_{m.replace('.', '_')}",
        ("lora_down.weight", "lora_up.weight"),
        True,
    ),
    "fun": (
        lambda i, m, d: f"lora_unet__blocks_{i}_{m.replace('.', '_')}",
        ("lora_down.weight", "lora_up.weight"),
        True,
    ),
    "diffusers": (lambda i, m, d: f"transformer.blocks.{i}.{d}", ("lora_A.weight", "lora_B.weight"), False),
    "peft": (
        lambda i, m, d: f"base_model.model.blocks.{i}.{m}",
        ("lora_A.default.weight", "lora_B.default.weight"),
        False,
    ),
    "comfyui": (lambda i, m, d: f"model.diffusion_model.blocks.{i}.{m}", ("lora_A.weight", "lora_B.weight"), True),
}
FORMATS = (*LOW_RANK, "loha", "lokr", "lightx2v")


def shapes(cfg: DiTConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each block module."""
    d, f = cfg.dim, cfg.ffn_dim
    return {m: ((f, d) if m == "ffn.0" else (d, f) if m == "ffn.2" else (d, d)) for m in BLOCK_MODULES}


def make_lora(fmt: str, cfg: DiTConfig, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    state, deltas = {}, {}
    for i in range(cfg.num_layers):
        for m, d in BLOCK_MODULES.items():
            out, inp = shapes(cfg)[m]
            target = f"blocks.{i}.{m}.weight"
            if fmt in LOW_RANK:
                key, (down_name, up_name), with_alpha = LOW_RANK[fmt]
                down, up = rand(RANK, inp), rand(out, RANK)
                state[f"{key(i, m, d)}.{down_name}"], state[f"{key(i, m, d)}.{up_name}"] = down, up
                if with_alpha:
                    state[f"{key(i, m, d)}.alpha"] = torch.tensor(ALPHA)
                deltas[target] = up @ down * (ALPHA / RANK if with_alpha else 1.0)
            elif fmt == "loha":
                key = f"lora_unet_blocks_{i}_{m.replace('.', '_')}"
                w1a, w1b, w2a, w2b = (
                    rand(out, RANK, scale=0.6),
                    rand(RANK, inp, scale=0.6),
                    rand(out, RANK),
                    rand(RANK, inp),
                )
                state.update({f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a})
                state.update({f"{key}.hada_w2_b": w2b, f"{key}.alpha": torch.tensor(ALPHA)})
                deltas[target] = (w1a @ w1b) * (w2a @ w2b) * (ALPHA / RANK)
            elif fmt == "lokr":  # w1 whole (4, 4), w2 a product: out = 4 * (out / 4), in = 4 * (in / 4)
                key = f"lycoris_blocks_{i}_{d.replace('.', '_')}"
                w1, w2a, w2b = rand(4, 4, scale=1.0), rand(out // 4, 2), rand(2, inp // 4)
                state.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b})
                state[f"{key}.alpha"] = torch.tensor(ALPHA)
                deltas[target] = torch.kron(w1, w2a @ w2b) * (ALPHA / 2)
            else:
                _lightx2v_block(state, deltas, i, m, out, inp, rand)
        if fmt == "lightx2v":
            state[f"diffusion_model.blocks.{i}.diff_m"] = deltas[f"blocks.{i}.modulation"] = rand(
                1, 6, cfg.dim, scale=0.1
            )
            state[f"diffusion_model.blocks.{i}.norm3.diff"] = deltas[f"blocks.{i}.norm3.weight"] = rand(
                cfg.dim, scale=0.1
            )
            state[f"diffusion_model.blocks.{i}.norm3.diff_b"] = deltas[f"blocks.{i}.norm3.bias"] = rand(
                cfg.dim, scale=0.1
            )
    if fmt == "lightx2v":
        out = cfg.out_dim * 4  # head: patch 1x2x2
        state["diffusion_model.head.head.diff"] = deltas["head.head.weight"] = rand(out, cfg.dim, scale=0.05)
        state["diffusion_model.head.head.diff_b"] = deltas["head.head.bias"] = rand(out, scale=0.05)
        state["diffusion_model.time_projection.1.diff_b"] = deltas["time_projection.1.bias"] = rand(
            6 * cfg.dim, scale=0.05
        )
    return state, deltas


def _lightx2v_block(state, deltas, i, m, out, inp, rand) -> None:
    """LightX2V's step-distill files: lora_down/lora_up + alpha, and a bias delta diff_b beside each."""
    key = f"diffusion_model.blocks.{i}.{m}"
    down, up, bias = rand(RANK, inp), rand(out, RANK), rand(out, scale=0.1)
    state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)})
    state[f"{key}.diff_b"] = bias
    deltas[f"blocks.{i}.{m}.weight"] = up @ down * (ALPHA / RANK)
    deltas[f"blocks.{i}.{m}.bias"] = bias


def diffusers_subset(state: dict, deltas: dict) -> tuple[dict, dict]:
    """The part of a LightX2V file diffusers applies: it drops ``diff_m``, the norm deltas, and a time-projection bias
    delta that comes without a weight delta (``_convert_non_diffusers_wan_lora_to_diffusers``)."""
    dropped = ("modulation", ".norm3.", "time_projection")
    keep = {k: v for k, v in state.items() if not k.endswith("diff_m") and not any(d in k for d in dropped[1:])}
    return keep, {k: v for k, v in deltas.items() if not any(d in k for d in dropped)}


def merge_by_hand(base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], strength: float) -> dict:
    """Official-layout weights + strength * delta, in float32."""
    out = dict(base)
    for name, delta in deltas.items():
        out[name] = base[name] + strength * delta.reshape(base[name].shape)
    return out
