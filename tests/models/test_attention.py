"""``models.attention`` is the one entry point: padding keys cut by ``key_len`` equal a key mask, the log-sum-exp
variant matches plain math, a backend can be named explicitly, and the VAE goes through it too."""

import pytest
import torch
import torch.nn.functional as F

from wanflow.models import attention as attn
from wanflow.models.vae_blocks import AttentionBlock


def qkv(seed: int = 0, length: int = 7):
    return torch.randn(3, 2, length, 3, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_key_len_equals_masking_the_padding_keys():
    q, k, v = qkv()
    keep = (torch.arange(7) < 5)[None, None, None]
    masked = F.scaled_dot_product_attention(*(a.transpose(1, 2) for a in (q, k, v)), attn_mask=keep).transpose(1, 2)
    torch.testing.assert_close(attn.attention(q, k, v, key_len=5), masked, rtol=0, atol=1e-12)
    assert torch.equal(attn.attention(q, k, v, key_len=7), attn.attention(q, k, v))


def test_lse_variant_matches_plain_math():
    q, k, v = qkv(1)
    out, lse = attn.attention_lse(q, k, v)
    want, want_lse = attn.math_attention(*(a.transpose(1, 2) for a in (q, k, v)))
    torch.testing.assert_close(out, want.transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse.transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(attn.attention(q, k, v), out, rtol=0, atol=1e-12)


def test_backend_named_explicitly(monkeypatch):
    calls = []
    monkeypatch.setitem(attn.BACKENDS, "probe", lambda q, k, v: calls.append(q.shape) or v)
    q, k, v = qkv()
    assert attn.attention(q, k, v, backend="probe") is v and calls == [q.shape]
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attn.attention(q, k, v, backend="nope")


def test_the_vae_attends_through_the_entry_point(monkeypatch):
    seen = []
    sdpa = attn.BACKENDS["sdpa"]
    monkeypatch.setitem(attn.BACKENDS, "sdpa", lambda q, k, v: seen.append(q.shape) or sdpa(q, k, v))
    block = AttentionBlock(8)
    with torch.no_grad():
        block(torch.randn(1, 8, 2, 3, 4))  # (B, C, T, H, W): one attention per frame batch
    assert seen == [(2, 12, 1, 8)]  # (frames, H * W, one head, C)


def test_default_follows_device_dtype_and_head_and_the_environment_forces_one():
    import subprocess
    import sys

    assert attn.default_backend("cpu", torch.bfloat16, 64) == "sdpa"
    assert attn.default_backend("cuda", torch.float32, 64) == "sdpa"  # flash kernels take half precision only
    probe = "from wanflow.models.attention import default_backend as d; import torch; print(d('cpu', torch.float32, 8))"
    env = {"WANFLOW_ATTENTION": "flash2", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "flash2"
    env["WANFLOW_ATTENTION"] = "nope"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "unknown attention backend 'nope'" in out.stderr
