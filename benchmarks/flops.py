"""The analytic FLOP model of the project's performance notes (``reference/flops.py``), for any wanflow config.

Same conventions: 2 FLOPs per multiply-add; attention core ``4 Lq Lk d``; elementwise work is not counted; the text
context is padded to ``text_len`` and attended in full; the time MLP runs once per forward (not per token). The
reference's functions take its fixed real configs; these take ``DiTConfig`` / ``T5Config`` / ``VAEConfig``, so the
small CPU configs get their own counts. For the real configs they give the reference's numbers (``python
benchmarks/flops.py`` prints them: T2V-A14B 480p 1.68 PF per forward, 720p 6.52 PF, TI2V-5B 720p 0.517 PF).
"""

from __future__ import annotations

import math

from wanflow.configs import DIT_CONFIGS, UMT5_XXL, VAE_CONFIGS, DiTConfig, T5Config, VAEConfig


def dit_tokens(cfg: DiTConfig, latent: tuple[int, int, int]) -> int:
    return math.prod(n // p for n, p in zip(latent, cfg.patch_size, strict=True))


def dit_forward(cfg: DiTConfig, tokens: int) -> float:
    """One DiT forward, batch 1 (a CFG step is two)."""
    d, f, n, lc = cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_len
    patch = math.prod(cfg.patch_size)
    embed = 2 * tokens * cfg.in_dim * patch * d + 2 * lc * (cfg.text_dim * d + d * d)
    time = 2 * (cfg.freq_dim * d + d * d + 6 * d * d)
    block = (
        2 * tokens * 4 * d * d  # self-attention q, k, v, o
        + 4 * tokens * tokens * d  # self-attention core
        + 2 * tokens * 2 * d * d  # cross-attention q, o
        + 2 * lc * 2 * d * d  # cross-attention k, v
        + 4 * tokens * lc * d  # cross-attention core
        + 2 * tokens * 2 * d * f  # FFN
    )
    head = 2 * tokens * d * patch * cfg.out_dim
    return embed + time + n * block + head


def t5_encode(cfg: T5Config, seq: int | None = None) -> float:
    """One prompt through the umT5 encoder (always padded to ``text_len`` tokens)."""
    seq = seq or cfg.text_len
    d, a = cfg.dim, cfg.dim_attn
    return cfg.num_layers * (2 * seq * (4 * d * a + 3 * d * cfg.dim_ffn) + 4 * seq * seq * a)


class _Convs:
    def __init__(self) -> None:
        self.flops = 0.0

    def conv(self, cin: int, cout: int, k: tuple[int, int, int], t: int, h: int, w: int) -> None:
        self.flops += 2 * cin * cout * math.prod(k) * t * h * w

    def res(self, cin: int, cout: int, t: int, h: int, w: int) -> None:
        self.conv(cin, cout, (3, 3, 3), t, h, w)
        self.conv(cout, cout, (3, 3, 3), t, h, w)
        if cin != cout:
            self.conv(cin, cout, (1, 1, 1), t, h, w)

    def attn(self, c: int, t: int, h: int, w: int) -> None:
        self.conv(c, 3 * c, (1, 1, 1), t, h, w)
        self.conv(c, c, (1, 1, 1), t, h, w)
        self.flops += 4 * (h * w) ** 2 * c * t


def vae_decode(cfg: VAEConfig, frames: int, height: int, width: int) -> float:
    """Decoder of either VAE version: latents of a ``frames`` x ``height`` x ``width`` video back to pixels."""
    acc = _Convs()
    st, s, _ = cfg.stride
    t, h, w = (frames - 1) // st + 1, height // s, width // s
    dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
    acc.conv(cfg.z_dim, cfg.z_dim, (1, 1, 1), t, h, w)
    acc.conv(cfg.z_dim, dims[0], (3, 3, 3), t, h, w)
    acc.res(dims[0], dims[0], t, h, w)
    acc.attn(dims[0], t, h, w)
    acc.res(dims[0], dims[0], t, h, w)
    upsample_t = list(reversed(cfg.temporal_downsample))
    v21 = cfg.version == "2.1"
    for i in range(len(cfg.dim_mult)):
        cin, cout = dims[i], dims[i + 1]
        if v21 and i > 0:
            cin //= 2  # the 2.1 resample halves the channels
        for _ in range(cfg.num_res_blocks + 1):
            acc.res(cin, cout, t, h, w)
            cin = cout
        if i < len(cfg.dim_mult) - 1:
            if upsample_t[i]:
                acc.conv(cout, 2 * cout, (3, 1, 1), t - 1, h, w)
                t = 1 + (t - 1) * 2
            h, w = 2 * h, 2 * w
            acc.conv(cout, cout // 2 if v21 else cout, (1, 3, 3), t, h, w)
    acc.conv(dims[-1], 3 * cfg.patch_size**2, (3, 3, 3), t, h, w)
    return acc.flops


if __name__ == "__main__":
    for name, vae, frames, width, height in [
        ("t2v-A14B", "wan2.1", 81, 832, 480),
        ("t2v-A14B", "wan2.1", 81, 1280, 720),
        ("ti2v-5B", "wan2.2", 121, 1280, 704),
    ]:
        dit = DIT_CONFIGS[name]
        s = VAE_CONFIGS[vae].stride
        tokens = dit_tokens(dit, ((frames - 1) // s[0] + 1, height // s[1], width // s[2]))
        print(
            f"{name} {width}x{height}x{frames}: {tokens} tokens, DiT forward {dit_forward(dit, tokens) / 1e15:.3f} PF, "
            f"T5 {t5_encode(UMT5_XXL) / 1e12:.2f} TF per prompt, "
            f"VAE decode {vae_decode(VAE_CONFIGS[vae], frames, height, width) / 1e12:.1f} TF"
        )
