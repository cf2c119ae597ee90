"""DiT keys: official ``WanModel`` (also wanflow's own module names) <-> diffusers ``WanTransformer3DModel``."""

from __future__ import annotations

from typing import Any

from wanflow.checkpoints.keymap import KeyMap
from wanflow.configs import DiTConfig, check_count
from wanflow.tasks import task_for_channels

_ATTN = (
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("o.", "to_out.0."),
    ("norm_q.", "norm_q."),
    ("norm_k.", "norm_k."),
)

DIT_KEYMAP = KeyMap(
    "DiT",
    (
        ("patch_embedding.", "patch_embedding."),
        ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
        ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
        ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
        ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
        ("time_projection.1.", "condition_embedder.time_proj."),
        *((f"blocks.{{}}.self_attn.{a}", f"blocks.{{}}.attn1.{b}") for a, b in _ATTN),
        *((f"blocks.{{}}.cross_attn.{a}", f"blocks.{{}}.attn2.{b}") for a, b in _ATTN),
        ("blocks.{}.norm3.", "blocks.{}.norm2."),  # the affine norm before cross-attention
        ("blocks.{}.ffn.0.", "blocks.{}.ffn.net.0.proj."),
        ("blocks.{}.ffn.2.", "blocks.{}.ffn.net.2."),
        ("blocks.{}.modulation", "blocks.{}.scale_shift_table"),
        ("head.head.", "proj_out."),
        ("head.modulation", "scale_shift_table"),
    ),
)

# Prefixes that other tools put in front of the official keys (ComfyUI, some fine-tuning tools).
FOREIGN_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove a prefix that every key carries (e.g. ComfyUI's ``model.diffusion_model.``)."""
    for prefix in FOREIGN_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


# The DiT's context length, which ``WanTransformer3DModel`` does not store (it pads to whatever it is given): wanflow's
# own key. Private (a leading "_"), so diffusers drops it without the "not expected" warning it gives other keys.
TEXT_LEN_KEY = "_wanflow_text_len"


def dit_config_to_diffusers(cfg: DiTConfig) -> dict[str, Any]:
    """``WanTransformer3DModel`` config for this DiT."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": cfg.rope_max_len,
        "pos_embed_seq_len": None,
        TEXT_LEN_KEY: cfg.text_len,
    }


def dit_config_from_diffusers(data: dict[str, Any]) -> DiTConfig:
    """Inverse of ``dit_config_to_diffusers``; the model type follows from the channel counts. The published configs
    have no ``TEXT_LEN_KEY`` and take the official 512 context tokens."""
    if data.get("image_dim") or data.get("added_kv_proj_dim"):
        raise ValueError("this transformer has a CLIP image branch (Wan 2.1 I2V/FLF2V), which Wan 2.2 does not use")
    sizes = {"in_channels": 16, "out_channels": 16, "num_attention_heads": 40, "attention_head_dim": 128}
    in_dim, out_dim, heads, head_dim = (check_count(key, data.get(key, default)) for key, default in sizes.items())
    model_type = task_for_channels(in_dim, out_dim).model_type
    patch = data.get("patch_size", (1, 2, 2))
    return DiTConfig(
        model_type=model_type,
        in_dim=in_dim,
        out_dim=out_dim,
        dim=heads * head_dim,
        ffn_dim=data.get("ffn_dim", 13824),
        freq_dim=data.get("freq_dim", 256),
        text_dim=data.get("text_dim", 4096),
        num_heads=heads,
        num_layers=data.get("num_layers", 40),
        patch_size=tuple(patch) if isinstance(patch, list) else patch,
        eps=data.get("eps", 1e-6),
        rope_max_len=data.get("rope_max_seq_len", 1024),
        text_len=data.get(TEXT_LEN_KEY, 512),
    )
