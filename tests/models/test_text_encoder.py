"""umT5 encoder: official weights through the key map into transformers' model, against an independent reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.tiny.t5 import TINY_T5, official_shapes, random_official_state
from tests.tiny.tokenizer import build_tiny_tokenizer
from wanflow.checkpoints.io import load_strict, read_weights
from wanflow.checkpoints.maps.t5 import (
    T5_KEYMAP,
    add_tied,
    drop_tied,
    t5_config_from_hf,
    t5_config_from_state_dict,
    t5_config_to_hf,
)
from wanflow.configs import UMT5_XXL
from wanflow.models.text_encoder import TextEncoder, build_umt5, clean_prompt, pad_context

PROMPTS = ["a red circle moving right on a black background", "a blue square", "  a white   cat &amp;amp; a dog "]


# ---- the reference encoder: wan22.md §6.2, operating on the official state dict -----------------------------------


def ref_bucket(rel: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional bucket of ``rel = key_pos - query_pos``, with the reference's float32 log."""
    half = num_buckets // 2
    max_exact = half // 2
    bucket = (rel > 0).long() * half
    n = rel.abs()
    log_part = torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    large = torch.clamp(max_exact + log_part.long(), max=half - 1)
    return bucket + torch.where(n < max_exact, n, large)


def ref_rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def ref_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def ref_encoder(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L]`` ids and mask -> ``[B, L, dim]``: embed, blocks (attention + gated FFN), final RMS norm."""
    B, L = ids.shape
    x = state["token_embedding.weight"][ids]
    pos = torch.arange(L)
    buckets = ref_bucket(pos[None, :] - pos[:, None])  # (Lq, Lk)
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})

    def split(t):  # (B, L, heads * d) -> (B, heads, L, d)
        return t.view(B, L, heads, -1).transpose(1, 2)

    for i in range(layers):
        prefix = f"blocks.{i}."
        w = {k.removeprefix(prefix).removesuffix(".weight"): v for k, v in state.items() if k.startswith(prefix)}
        bias = w["pos_embedding.embedding"][buckets].permute(2, 0, 1)[None]  # (1, heads, Lq, Lk)
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        h = ref_rms(x, w["norm1"])
        q, k, v = (split(h @ w[f"attn.{n}"].T) for n in "qkv")
        logits = torch.einsum("bnqd,bnkd->bnqk", q, k) + bias  # no 1/sqrt(d)
        weights = torch.softmax(logits.float(), dim=-1).type_as(logits)
        o = torch.einsum("bnqk,bnkd->bnqd", weights, v).transpose(1, 2).reshape(B, L, -1)
        x = x + o @ w["attn.o"].T
        h = ref_rms(x, w["norm2"])
        x = x + ((h @ w["ffn.fc1"].T) * ref_gelu_tanh(h @ w["ffn.gate.0"].T)) @ w["ffn.fc2"].T
    return ref_rms(x, state["norm.weight"])


# ---- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tokenizer):
    """Official-layout weights saved as .pth, read back, config inferred, mapped and loaded on meta."""
    cfg = TINY_T5.replace(vocab_size=len(tokenizer))
    path = tmp_path_factory.mktemp("t5") / "models_t5_tiny.pth"
    torch.save(random_official_state(cfg), path)
    official = read_weights(path)
    inferred = t5_config_from_state_dict(official)
    with torch.device("meta"):
        model = build_umt5(inferred)
    load_strict(model, add_tied(T5_KEYMAP.forward(official)), "tiny umT5")
    model.tie_weights()
    return SimpleNamespace(
        cfg=cfg,
        inferred=inferred,
        official=official,
        model=model,
        encoder=TextEncoder(tokenizer, model, text_len=cfg.text_len),
    )


def tokenize(tokenizer, prompts, text_len):
    batch = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        truncation=True,
        max_length=text_len,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return batch["input_ids"], batch["attention_mask"]


# ---- parity --------------------------------------------------------------------------------------------------------


def test_config_inferred_from_shapes(loaded):
    assert loaded.inferred == loaded.cfg.replace(text_len=UMT5_XXL.text_len)
    assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight


def test_encoder_matches_reference(loaded, tokenizer):
    ids, mask = tokenize(tokenizer, PROMPTS, loaded.cfg.text_len)
    assert 0 < mask.sum(1).min() < mask.sum(1).max() < loaded.cfg.text_len  # real padding in the batch
    expected = ref_encoder(loaded.official, ids, mask, loaded.cfg.num_heads)
    with torch.no_grad():
        hidden = loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)

    contexts = loaded.encoder.encode(PROMPTS)
    for context, full, n in zip(contexts, expected, mask.sum(1).tolist(), strict=True):
        assert context.shape == (n, loaded.cfg.dim)
        torch.testing.assert_close(context, full[:n], rtol=0, atol=1e-5)


def test_padded_context_matches_diffusers(loaded, tokenizer):
    pipeline_wan = pytest.importorskip("diffusers.pipelines.wan.pipeline_wan")
    pipe = SimpleNamespace(tokenizer=tokenizer, text_encoder=loaded.model)
    with torch.no_grad():  # as inside ``WanPipeline.__call__`` (SDPA picks another CPU kernel when grad is on)
        expected = pipeline_wan.WanPipeline._get_t5_prompt_embeds(
            pipe,
            prompt=PROMPTS,
            device=torch.device("cpu"),
            max_sequence_length=loaded.cfg.text_len,
            dtype=torch.float32,
        )
    ours = pad_context(loaded.encoder.encode(PROMPTS), loaded.cfg.text_len)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


# ---- relative position buckets -------------------------------------------------------------------------------------

SAMPLE_BUCKETS = {
    -20: 10,
    -40: 12,
    -60: 13,
    -80: 14,
    -100: 15,
    -500: 15,
    20: 26,
    40: 28,
    60: 29,
    80: 30,
    100: 31,
    500: 31,
    0: 0,
    -1: 1,
    1: 17,
    -7: 7,
    7: 23,
}


def test_relative_position_buckets(loaded):
    attention = loaded.model.encoder.block[0].layer[0].SelfAttention
    assert (attention.relative_attention_num_buckets, attention.relative_attention_max_distance) == (32, 128)
    rel = torch.tensor(list(SAMPLE_BUCKETS))
    assert attention._relative_position_bucket(rel).tolist() == list(SAMPLE_BUCKETS.values())
    assert ref_bucket(rel).tolist() == list(SAMPLE_BUCKETS.values())

    # Every offset of a 300-token sequence, read through the model's bias table with bucket b holding the value b.
    L = 300
    with torch.no_grad():
        saved = attention.relative_attention_bias.weight.clone()
        attention.relative_attention_bias.weight.copy_(torch.arange(32.0)[:, None].expand_as(saved))
        table = attention.compute_bias(L, L)[0, 0].long()
        attention.relative_attention_bias.weight.copy_(saved)
    pos = torch.arange(L)
    assert torch.equal(table, ref_bucket(pos[None, :] - pos[:, None]))


# ---- prompt cleaning, trimming, re-padding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("fish &amp;amp; chips", "fish & chips"),
        ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
        ("cafÃ© au lait", "café au lait"),
        ("  a \t red\n\n circle   moving\u3000right  ", "a red circle moving right"),
        ("", ""),
    ],
)
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_trim_and_zero_pad(loaded, tokenizer):
    prompts = [*PROMPTS, "a red circle " * 40]  # the last one is truncated to text_len
    text_len = loaded.cfg.text_len
    contexts = loaded.encoder.encode(prompts)
    for prompt, context in zip(prompts, contexts, strict=True):
        tokens = tokenizer(clean_prompt(prompt), add_special_tokens=False)["input_ids"]
        assert context.shape[0] == min(len(tokens) + 1, text_len)  # tokens + EOS
    ids, _ = loaded.encoder.tokenize(prompts)
    assert ids[0, contexts[0].shape[0] - 1] == tokenizer.eos_token_id
    assert ids[-1, -1] == tokenizer.eos_token_id

    padded = pad_context(contexts, text_len)
    assert padded.shape == (len(prompts), text_len, loaded.cfg.dim)
    for row, context in zip(padded, contexts, strict=True):
        n = context.shape[0]
        assert torch.equal(row[:n], context)
        assert torch.count_nonzero(row[n:]) == 0
    with pytest.raises(ValueError):
        pad_context(contexts, text_len - 1)


def test_encode_follows_model_dtype(loaded, tokenizer):
    model = build_umt5(loaded.cfg)
    model.load_state_dict(loaded.model.state_dict())
    contexts = TextEncoder(tokenizer, model.to(torch.bfloat16), text_len=loaded.cfg.text_len).encode(PROMPTS[:1])
    assert contexts[0].dtype == torch.bfloat16


# ---- key map and the full-size model -------------------------------------------------------------------------------


def test_keymap_round_trip_tiny(loaded):
    hf = T5_KEYMAP.forward(loaded.official)
    back = T5_KEYMAP.reverse(hf)
    assert list(back) == list(loaded.official)
    assert all(back[k] is v for k, v in loaded.official.items())
    assert set(hf) == set(drop_tied(loaded.model.state_dict()))
    assert T5_KEYMAP.forward(T5_KEYMAP.reverse(hf)) == hf


def test_umt5_xxl_keys_and_size():
    official = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in official_shapes(UMT5_XXL).items()}
    assert len(official) == 242
    assert t5_config_from_state_dict(official) == UMT5_XXL

    names = T5_KEYMAP.convert_keys(official)
    assert len(set(names.values())) == len(names) == 242  # a bijection
    used = {i for key in official for i, (a, _) in enumerate(T5_KEYMAP.rules) if T5_KEYMAP._patterns[0][i].match(key)}
    assert used == set(range(len(T5_KEYMAP.rules)))  # no dead rule
    assert T5_KEYMAP.convert_keys(names.values(), reverse=True) == {v: k for k, v in names.items()}

    with torch.device("meta"):
        model = build_umt5(UMT5_XXL)
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336  # tied embedding counted once
    expected = model.state_dict()
    hf = add_tied(T5_KEYMAP.forward(official))
    assert set(hf) == set(expected)
    assert all(tuple(hf[k].shape) == tuple(v.shape) for k, v in expected.items())
    assert t5_config_from_state_dict(drop_tied(expected)) == UMT5_XXL  # HF keys are accepted too


def test_hf_config_round_trip():
    for cfg in (UMT5_XXL, TINY_T5.replace(text_len=UMT5_XXL.text_len), TINY_T5.replace(max_distance=64, eps=1e-5)):
        hf = t5_config_to_hf(cfg)
        assert (hf.feed_forward_proj, hf.dropout_rate, hf.d_kv) == ("gated-gelu", 0.0, cfg.dim_attn // cfg.num_heads)
        assert t5_config_from_hf(hf) == cfg.replace(text_len=UMT5_XXL.text_len)
    with pytest.raises(ValueError):
        t5_config_from_hf(t5_config_to_hf(TINY_T5).__class__(feed_forward_proj="relu"))
