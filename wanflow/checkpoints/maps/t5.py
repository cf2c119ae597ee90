"""umT5 keys: official ``models_t5_umt5-xxl-enc-bf16.pth`` <-> transformers ``UMT5EncoderModel`` (diffusers
``text_encoder/``), and the encoder config read from tensor shapes or from / to a ``UMT5Config``.

The token embedding is tied in ``UMT5EncoderModel``: its ``state_dict()`` lists it twice (``shared.weight`` and
``encoder.embed_tokens.weight``, one tensor) while ``save_pretrained`` writes only ``shared.weight``. The map covers
the saved form, so official -> HF -> official is the identity; ``add_tied`` / ``drop_tied`` convert between the
saved form and the full ``state_dict()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from wanflow.checkpoints.keymap import KeyMap
from wanflow.configs import T5Config

if TYPE_CHECKING:  # transformers is slow to import; it is imported when a config is converted
    from transformers import UMT5Config

V = TypeVar("V")

_ATTN = "blocks.{}.attn.", "encoder.block.{}.layer.0.SelfAttention."
_FFN = "blocks.{}.ffn.", "encoder.block.{}.layer.1.DenseReluDense."

T5_KEYMAP = KeyMap(
    "umT5",
    (
        ("token_embedding.weight", "shared.weight"),
        ("blocks.{}.norm1.", "encoder.block.{}.layer.0.layer_norm."),
        *((_ATTN[0] + p + ".", _ATTN[1] + p + ".") for p in "qkvo"),
        ("blocks.{}.pos_embedding.embedding.", _ATTN[1] + "relative_attention_bias."),  # [buckets, heads] in both
        ("blocks.{}.norm2.", "encoder.block.{}.layer.1.layer_norm."),
        (_FFN[0] + "gate.0.", _FFN[1] + "wi_0."),  # the GELU branch
        (_FFN[0] + "fc1.", _FFN[1] + "wi_1."),  # the linear branch
        (_FFN[0] + "fc2.", _FFN[1] + "wo."),
        ("norm.weight", "encoder.final_layer_norm.weight"),
    ),
)

# The second name transformers gives the token embedding, and the name it is saved under.
TIED_EMBEDDING = ("encoder.embed_tokens.weight", "shared.weight")


def add_tied(state: Mapping[str, V]) -> dict[str, V]:
    """Saved HF layout -> the keys of ``UMT5EncoderModel.state_dict()`` (the embedding under both names)."""
    alias, source = TIED_EMBEDDING
    return {**state, alias: state[source]}


def drop_tied(state: Mapping[str, V]) -> dict[str, V]:
    """``UMT5EncoderModel.state_dict()`` -> the saved HF layout that ``T5_KEYMAP`` maps."""
    return {k: v for k, v in state.items() if k != TIED_EMBEDDING[0]}


def t5_config_from_state_dict(state: Mapping[str, object]) -> T5Config:
    """Encoder sizes read from the shapes of an official-layout state dict (tensors or meta tensors).

    Sizes that leave no trace in the weights (``max_distance``, ``eps``, ``text_len``) keep the umT5 values.
    """
    if TIED_EMBEDDING[1] in state:  # HF layout: rename first
        state = T5_KEYMAP.reverse(drop_tied(state))
    if "token_embedding.weight" not in state:
        raise ValueError("not a umT5 encoder state dict: 'token_embedding.weight' is missing")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers or layers != set(range(len(layers))):
        raise ValueError(f"umT5 blocks must be numbered 0..N-1, found {sorted(layers)[:10]}")
    if "blocks.0.pos_embedding.embedding.weight" not in state:
        raise ValueError("no per-layer relative position embedding (blocks.0.pos_embedding); not a umT5 encoder")
    vocab, dim = state["token_embedding.weight"].shape
    dim_attn = state["blocks.0.attn.q.weight"].shape[0]
    dim_ffn = state["blocks.0.ffn.fc1.weight"].shape[0]
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    if dim_attn % num_heads:
        raise ValueError(f"attention width {dim_attn} is not a multiple of the {num_heads} heads")
    return T5Config(
        vocab_size=vocab,
        dim=dim,
        dim_attn=dim_attn,
        dim_ffn=dim_ffn,
        num_heads=num_heads,
        num_layers=len(layers),
        num_buckets=num_buckets,
    )


def t5_config_to_hf(cfg: T5Config) -> UMT5Config:
    """The ``UMT5Config`` of this encoder: gated GELU-tanh FFN, no dropout, no 1/sqrt(d) (UMT5 never scales)."""
    from transformers import UMT5Config

    if cfg.dim_attn % cfg.num_heads:
        raise ValueError(f"dim_attn={cfg.dim_attn} must be a multiple of num_heads={cfg.num_heads}")
    return UMT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_kv=cfg.dim_attn // cfg.num_heads,
        d_ff=cfg.dim_ffn,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        dropout_rate=0.0,
        layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu",  # GELU "gelu_new" = tanh approximation
        pad_token_id=0,
        eos_token_id=1,
    )


def t5_config_from_hf(hf: UMT5Config) -> T5Config:
    """Inverse of ``t5_config_to_hf``; rejects configs whose FFN is not the gated GELU-tanh of umT5."""
    if not (hf.is_gated_act and hf.dense_act_fn in ("gelu_new", "gelu_pytorch_tanh")):
        raise ValueError(f"umT5 needs feed_forward_proj='gated-gelu', this config has {hf.feed_forward_proj!r}")
    return T5Config(
        vocab_size=hf.vocab_size,
        dim=hf.d_model,
        dim_attn=hf.d_kv * hf.num_heads,
        dim_ffn=hf.d_ff,
        num_heads=hf.num_heads,
        num_layers=hf.num_layers,
        num_buckets=hf.relative_attention_num_buckets,
        max_distance=hf.relative_attention_max_distance,
        eps=hf.layer_norm_epsilon,
    )


# GGUF files of umT5 (city96's umt5-xxl-encoder, made with llama.cpp's converter) name tensors as llama.cpp does
# (``enc.blk.0.attn_q.weight``, ``token_embd.weight``); the ``gguf`` package holds that naming for transformers' keys.
GGUF_T5_ARCHS = ("t5encoder", "t5")  # the files' ``general.architecture``
_HF_BLOCK = (
    *(f"layer.0.SelfAttention.{p}" for p in ("q", "k", "v", "o", "relative_attention_bias")),
    "layer.0.layer_norm",
    "layer.1.layer_norm",
    *(f"layer.1.DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wo")),
)


def from_gguf_names(state: Mapping[str, V]) -> dict[str, V]:
    """A umT5 state dict under llama.cpp's GGUF names -> transformers' saved names (what ``T5_KEYMAP`` maps); a name
    the map does not know is kept (and reported by the strict load)."""
    import gguf

    blocks = {int(m.group(1)) for k in state if (m := re.match(r"enc\.blk\.(\d+)\.", k))}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, max(blocks, default=-1) + 1)
    hf = ["shared", "encoder.final_layer_norm"]
    hf += [f"encoder.block.{i}.{part}" for i in sorted(blocks) for part in _HF_BLOCK]
    renamed = {names.get_name(name): name for name in hf}
    out = {}
    for key, value in state.items():
        base, dot, suffix = key.rpartition(".")
        out[f"{renamed[base]}.{suffix}" if dot and base in renamed else key] = value
    return out
