"""What a LoRA costs per DiT step, wanflow vs diffusers (PEFT), same weights, same LoRA, same inputs, in one run.

    python benchmarks/lora_step.py --threads 2                             # CPU, small shapes (dim 256, 4 layers)
    python benchmarks/lora_step.py --dim 1024 --layers 2 --heads 8 --threads 2 --repeats 3
    python benchmarks/lora_step.py --variant t2v-A14B --frames 81 --height 480 --width 832 \\
        --device cuda --dtype bfloat16 --rank 64                       # real shapes, random weights (GPU)

One rank-``--rank`` LoRA on every linear of every block (q, k, v, o of both attentions, both FFN layers: what the
step-distilled Lightning LoRAs touch), random factors, alpha = rank. Timed, calls interleaved, best of
``--repeats`` calls in each of ``--rounds`` rounds over all variants: the plain model; wanflow with the LoRA beside the
weights (``runtime.lora``: a forward hook adds ``s (x A^T) B^T``) and merged; diffusers with the same LoRA through PEFT
(``load_lora_adapter``), unfused and fused. A step is one CFG velocity as each pipeline computes it (wanflow: one
batch of 2; diffusers: two calls), as in ``dit_vs_diffusers.py``; the overhead ratios compare each with its own plain
model. The outputs are compared too (printed): beside vs merged, PEFT vs fused, wanflow vs diffusers.
"""

from __future__ import annotations

import argparse

import torch
from dit_vs_diffusers import add_config_arguments, build, config_of, timed

from wanflow.checkpoints.lora import parse_lora
from wanflow.checkpoints.maps.dit import DIT_KEYMAP
from wanflow.runtime.lora import apply_lora, remove_lora

# every linear of a block: both attentions' q, k, v, o and the two FFN layers
BLOCK_LINEARS = (*(f"{a}.{m}" for a in ("self_attn", "cross_attn") for m in "qkvo"), "ffn.0", "ffn.2")


def random_lora(cfg, rank: int, device: torch.device) -> tuple[dict, dict]:
    """The same LoRA in Wan's key format (alpha = rank: scale 1) and in diffusers' (no alpha: scale 1; module names
    from wanflow's key map)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    wan, diffusers = {}, {}
    shapes = {"ffn.0": (cfg.ffn_dim, cfg.dim), "ffn.2": (cfg.dim, cfg.ffn_dim)}
    for i in range(cfg.num_layers):
        for module in BLOCK_LINEARS:
            out_f, in_f = shapes.get(module, (cfg.dim, cfg.dim))
            down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
            up = torch.randn(out_f, rank, generator=gen) * 0.02
            wan[f"diffusion_model.blocks.{i}.{module}.lora_down.weight"] = down
            wan[f"diffusion_model.blocks.{i}.{module}.lora_up.weight"] = up
            wan[f"diffusion_model.blocks.{i}.{module}.alpha"] = torch.tensor(float(rank))
            (theirs,) = DIT_KEYMAP.forward({f"blocks.{i}.{module}.weight": down})
            stem = theirs.removesuffix(".weight")
            diffusers[f"transformer.{stem}.lora_A.weight"] = down.to(device)
            diffusers[f"transformer.{stem}.lora_B.weight"] = up.to(device)
    return wan, diffusers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per variant and round (best kept)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all variants (best kept)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = config_of(args)
    ours, theirs = build(cfg, dtype, device)
    wan, diffusers = random_lora(cfg, args.rank, device)
    lora = parse_lora(wan, "benchmark LoRA")
    lat = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    x = torch.randn(1, cfg.in_dim, *lat, device=device)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    t = torch.tensor([900, 900], device=device)
    xd = x.to(dtype)

    def ours_step() -> torch.Tensor:
        return ours(torch.cat([x, x]), t, ctx)

    def theirs_step() -> list:
        return [theirs(xd, t[:1], ctx[i : i + 1], return_dict=False)[0] for i in range(2)]

    times: dict[str, list[float]] = {}

    def time(name: str, step) -> torch.Tensor:
        times.setdefault(name, []).append(timed({name: step}, args.repeats, device)[name])
        return step()

    for _ in range(args.rounds):  # each round times every variant: jitter of a shared machine hits all of them alike
        with torch.inference_mode():
            plain = time("wanflow plain", ours_step)
            apply_lora(ours, lora, "l", 1.0, merge=True, device=device)
            merged = time("wanflow merged", ours_step)
            remove_lora(ours, "l")
            apply_lora(ours, lora, "l", 1.0, device=device)
            beside = time("wanflow beside", ours_step)
            remove_lora(ours, "l")
            time("diffusers plain", theirs_step)
        theirs.load_lora_adapter(diffusers, adapter_name="l", prefix="transformer")
        with torch.inference_mode():
            peft = torch.cat(time("diffusers PEFT", theirs_step))
        theirs.fuse_lora(lora_scale=1.0)
        with torch.inference_mode():
            fused = torch.cat(time("diffusers fused", theirs_step))
        theirs.unfuse_lora()
        theirs.unload_lora()
    times = {name: min(values) for name, values in times.items()}
    effect = (merged - plain).abs().max().item()
    print(
        f"config: dim {cfg.dim}, layers {cfg.num_layers}, heads {cfg.num_heads}, latent {lat}, rank {args.rank}, "
        f"{args.dtype} on {args.device}, {args.threads} threads"
    )
    print(
        f"agreement: the LoRA moves the velocity by {effect:.3g}; wanflow beside vs merged "
        f"{(beside - merged).abs().max().item():.2g}, diffusers PEFT vs fused {(peft - fused).abs().max().item():.2g}, "
        f"wanflow vs diffusers (LoRA) {(beside - peft).abs().max().item():.2g}"
    )
    for name, seconds in times.items():
        base = times["wanflow plain" if name.startswith("wanflow") else "diffusers plain"]
        print(f"{name:16s} {seconds * 1e3:9.1f} ms   x{seconds / base:5.2f} of its plain step")
    print(
        f"LoRA unmerged: wanflow {times['wanflow beside'] * 1e3:.1f} ms vs diffusers PEFT "
        f"{times['diffusers PEFT'] * 1e3:.1f} ms per step: {times['diffusers PEFT'] / times['wanflow beside']:.2f}x"
    )


if __name__ == "__main__":
    main()
