"""The ``lightning`` preset (4 Euler steps on float timesteps, guidance 1: one DiT pass a step) against each model's
default settings, per stage and for the whole call, with a random step-distill-like LoRA (rank 16, LightX2V layout:
low rank + diff_b + diff_m) beside the weights and merged into them.

    python -m benchmarks.fewstep                                 # the built-in models and a medium random checkpoint
    python -m benchmarks.fewstep --models medium --repeats 5
    python -m benchmarks.fewstep --models t2v-A14B --ckpt_dir Wan2.2-T2V-A14B --size 832*480 --frames 81   # a GPU

The models are loaded once; the configurations run in turn, ``--repeats`` rounds after one warm-up round, and the best
time of each stage is kept (text encoding, denoising, decoding, and the whole call: the pipeline call without the
model load). The LoRA's values are random: this measures time, not quality.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from wanflow.builtin import builtin_checkpoint
from wanflow.cli.generate import parse_size
from wanflow.configs import DiTConfig
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"
MEDIUM = DiTConfig(model_type="t2v", in_dim=16, out_dim=16, dim=512, ffn_dim=1536, text_dim=32, num_heads=4,
                   num_layers=8)  # fmt: skip


def write_medium(root: Path) -> Path:
    """A random T2V-A14B-layout checkpoint with two 8-block, 512-wide experts and the tiny VAE and umT5."""
    from tests.tiny.checkpoint import write_dit, write_official_checkpoint
    from tests.tiny.dit import random_dit_state

    write_official_checkpoint(root, "t2v-A14B")
    for seed, folder in enumerate(("high_noise_model", "low_noise_model")):
        for old in (root / folder).iterdir():
            old.unlink()
        write_dit(MEDIUM, random_dit_state(MEDIUM, seed, scale=0.05), root / folder)
    return root


def random_lora(model: torch.nn.Module, path: Path, rank: int = 16) -> None:
    """A LightX2V-layout LoRA for ``model``: down/up + alpha and diff_b on every block linear, diff_m per block."""
    from safetensors.torch import save_file

    gen, state = torch.Generator().manual_seed(0), {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
            key = f"diffusion_model.{name}"
            state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.01
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.01
            state[f"{key}.alpha"] = torch.tensor(rank / 8.0)
            state[f"{key}.diff_b"] = torch.randn(module.out_features, generator=gen) * 0.01
    for i, block in enumerate(model.blocks):
        state[f"diffusion_model.blocks.{i}.diff_m"] = torch.randn(block.modulation.shape, generator=gen) * 0.01
    save_file(state, path)


# label -> (LoRA: None, beside (False) or merged (True); extra options)
CONFIGS = {
    "default": (None, {}),
    "lightning": (None, {"preset": "lightning"}),
    "lightning + LoRA beside": (False, {"preset": "lightning"}),
    "lightning + LoRA merged": (True, {"preset": "lightning"}),
}


def best_timings(pipe: WanPipeline, lora: Path, repeats: int, **kw) -> dict[str, dict[str, float]]:
    """Best time of each stage per configuration; the configurations interleaved, so a machine whose load drifts
    slows them alike. The first round warms up and is not counted."""
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in CONFIGS}
    for round_ in range(repeats + 1):
        for label, (merge, extra) in CONFIGS.items():
            if merge is not None:
                pipe.load_lora(lora, 1.0, merge=merge)
            video = pipe(PROMPT, **kw, **extra)
            if merge is not None:
                pipe.unload_lora()
            if round_:
                runs[label].append({**video.timings, "call": sum(video.timings.values())})
    return {label: {stage: min(r[stage] for r in rs) for stage in rs[0]} for label, rs in runs.items()}


def run_model(name: str, ckpt: Path, args: argparse.Namespace, tmp: Path) -> None:
    task = TASKS["t2v-A14B" if name == "medium" else name]
    pipe = WanPipeline.from_pretrained(ckpt, task=task.name, device=args.device)
    kw = {"seed": 1}
    if name == "medium":  # no wanflow.json: the reference's 40 steps with CFG, at a size a CPU runs in seconds
        kw.update(size=(128, 128), frames=9)
    if args.size:
        kw["size"] = args.size
    if args.frames:
        kw["frames"] = args.frames
    if task.image == "required":
        kw["image"] = first_frame(tmp, *kw.get("size", pipe.task.size))
    lora = tmp / f"{name}-lora.safetensors"
    random_lora(next(iter(pipe.experts.values())), lora)
    rows = best_timings(pipe, lora, args.repeats, **kw)
    w, h = kw.get("size", pipe.task.size)
    print(f"\n{name}: {w}x{h}, {kw.get('frames', pipe.task.frames)} frames, default {pipe.task.steps} steps with CFG "
          f"{pipe.task.guide_scale}")  # fmt: skip
    print("| settings | text (s) | denoise (s) | decode (s) | call (s) | call vs default |")
    print("|---|---|---|---|---|---|")
    for label, t in rows.items():
        ratio = rows["default"]["call"] / t["call"]
        print(f"| {label} | {t['encode']:.3f} | {t['denoise']:.3f} | {t['decode']:.3f} | {t['call']:.3f} | "
              f"{ratio:.2f}x faster |")  # fmt: skip


def first_frame(tmp: Path, width: int, height: int) -> Path:
    from PIL import Image

    path = tmp / "first.png"
    Image.new("RGB", (width, height), (200, 40, 40)).save(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[*TASKS, "medium"], choices=[*TASKS, "medium"])
    p.add_argument("--ckpt_dir", help="a checkpoint for the one model given (default: the built-in one)")
    p.add_argument("--size", type=parse_size, help="WIDTH*HEIGHT (default: the model's)")
    p.add_argument("--frames", type=int, help="frames (default: the model's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", help="default: cuda if available")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            if args.ckpt_dir:
                ckpt = Path(args.ckpt_dir)
            elif name == "medium":
                ckpt = write_medium(tmp / "medium")
            else:
                ckpt = builtin_checkpoint(name)
            run_model(name, ckpt, args, tmp)


if __name__ == "__main__":
    main()
