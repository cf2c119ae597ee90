"""What the guidance rules (``sampling.guidance``) do on a built-in model: the evaluator's colour, shape and direction
scores and the sharpness for classifier-free guidance and CFG-Zero* (the scale alone, and with 1 or 2 zero steps),
and skip layer guidance beside CFG (each of the model's blocks in turn, the default scale and range), each at the
model's own guidance scale and steps, on the same prompts and seeds (combinations seen in training).

    python benchmarks/guidance_rules.py [--task t2v-A14B] [--per_combo 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from wanflow.evaluation.evaluate import evaluate_case, seen_combos
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.progress import quiet_calls

RULES = {name: dict(guidance=name) for name in ("cfg", "cfg_zero_star:0", "cfg_zero_star:1", "cfg_zero_star:2")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="t2v-A14B")
    p.add_argument("--per_combo", type=int, default=4)
    p.add_argument("--seed", type=int, default=700)
    args = p.parse_args()
    torch.set_num_threads(2)
    pipe = WanPipeline.from_builtin(args.task)
    combos = seen_combos()
    print(f"{args.task} built-in, {len(combos) * args.per_combo} videos per rule ({len(combos)} seen combinations)")
    print(f"{'guidance':16s} {'colour':>7s} {'shape':>7s} {'direction':>9s} {'sharpness':>9s} {'s/video':>8s}")
    runs = RULES | {f"cfg+slg:{i}": dict(slg_layers=[i]) for i in range(pipe.dit_cfg.num_layers)}
    for rule, options in runs.items():
        t0 = time.perf_counter()
        with quiet_calls():
            result = evaluate_case(pipe, False, args.per_combo, args.seed, combos, short_prompts=True, sampling=options)
        seconds = (time.perf_counter() - t0) / (len(combos) * args.per_combo)
        s = result.scores
        print(f"{rule:16s} {s['colour']:7.2f} {s['shape']:7.2f} {s['direction']:9.2f} {result.sharpness:9.2f} "
              f"{seconds:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
