"""Every GPU figure the project needs, from one prepared command on a lent device, inside a time budget.

    bash benchmarks/fetch_gpu_wheels.sh                              # here, once: wheels the device lacks
    bash benchmarks/gpu_suite.sh                                     # on the device (its tool call: BENCHMARKS.md)
    python benchmarks/gpu_suite.py --dry-run --out /tmp/suite        # the same stages on the CPU, tiny shapes

Stages, in order of value; each prints its rows as it gets them and rewrites ``gpu_suite.md`` and
``gpu_suite.json`` under ``--out`` (default ``$OUT``), so a run cut short still returns what it measured:

  0   the device, and its measured bf16 matmul peak (8192^3);
  1   one A14B expert in bf16 at 832x480x81: one CFG DiT step, wanflow against diffusers' WanTransformer3DModel on
      the same weights (random, drawn on the device), TFLOP/s and fraction of the measured peak;
  2a  the same at 1280x720x81;  2b  TI2V-5B at 1280x704x121;
  3a  regional compile;  3b  FP8 weights (eager, compiled): step time, relative error of the output against eager;
  4   memory policies on A14B 480p: resident, model offload, block streaming under a 24 GB cap;
  4b  a LoRA training step on one A14B expert (832x480x21) with its blocks streamed, under the same cap;
  5a  the few-step preset's shape (4 steps, no CFG);  5b  the VAE decode of 81 frames at 480p, whole and tiled;
  5c  a rank-64 LoRA on every block linear, beside the weights, against the plain A14B 480p step.

A stage that fails (an out-of-memory error, say) is recorded and the next one runs; a stage whose estimated time
(from the FLOP model and stage 1's measured rate) exceeds what is left of ``--budget-s`` is skipped; at the end of
the budget an alarm stops the stage in flight, which is recorded as cut. Step FLOPs come from ``flops.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gpu_stages
import torch
from gpu_training import stage_lora_training
from matmul_peak import rate

REPO = Path(__file__).resolve().parent.parent


class BudgetExceeded(BaseException):
    """Raised by the alarm at the end of the budget; a BaseException, so a stage's error handling lets it through."""


@dataclass
class Suite:
    """What the stages share: device, dtype, budget, the rows so far and the files they go to."""

    device: torch.device
    dtype: torch.dtype
    dry: bool
    out: Path
    deadline: float  # time.monotonic() at the end of the budget
    repeats: int = 2
    compile_options: dict = field(default_factory=dict)
    memory_budget_gb: float = 24.0
    meta: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    keep: dict = field(default_factory=dict)  # what one stage leaves for the next (1 -> 2a: models, 3a -> 3b: output)
    peak_tflops: float | None = None  # measured matmul peak
    rate_tflops: float | None = None  # wanflow's measured rate at stage 1, for the estimates

    @property
    def dtype_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(self.dtype, str(self.dtype))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def workload(self, key: str) -> gpu_stages.Workload:
        return gpu_stages.workload(key, self.dry)

    def compute_s(self, flops: float) -> float:
        """Estimated seconds for ``flops`` of DiT work: stage 1's rate, else half the matmul peak."""
        rate = self.rate_tflops or 0.5 * (self.peak_tflops or 400.0)
        return flops / rate / 1e12

    def free(self) -> None:
        gpu_stages.release()

    def add(
        self,
        stage: str,
        what: str,
        seconds: list[float] | None = None,
        flops: float | None = None,
        peak: int | None = None,
        rel_err: float | None = None,
        note: str = "",
        status: str = "ok",
        **extra: float,
    ) -> dict:
        """Record one row, print it and rewrite both files at once; ``extra`` numbers go to the JSON only."""
        row = {"stage": stage, "what": what, "status": status, "seconds": None, "note": note, **extra}
        if seconds:
            best = min(seconds)
            row.update(seconds=best, times=seconds, spread=(max(seconds) - best) / best if best else 0.0)
            if flops:
                row.update(tflops=flops / best / 1e12, flops=flops)
                if self.peak_tflops:
                    row["of_peak"] = row["tflops"] / self.peak_tflops
        row.update(peak_gib=None if peak is None else peak / 2**30, rel_err=rel_err)
        self.rows.append(row)
        print(format_line(row), flush=True)
        self.write()
        return row

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"meta": self.meta, "rows": self.rows}
        (self.out / "gpu_suite.json").write_text(json.dumps(data, indent=1) + "\n")
        (self.out / "gpu_suite.md").write_text(markdown(self.meta, self.rows))


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_line(row: dict) -> str:
    return (
        f"[stage {row['stage']}] {row['what']}: {row['status']}  {fmt(row['seconds'], '.3f')} s  "
        f"{fmt(row.get('tflops'), '.4g')} TFLOP/s  of peak {fmt(row.get('of_peak'), '.1%')}  "
        f"peak {fmt(row['peak_gib'], '.2f')} GiB  rel err {fmt(row['rel_err'], '.2e')}  {row['note']}"
    )


def markdown(meta: dict, rows: list[dict]) -> str:
    """The table BENCHMARKS.md takes as it is, headed by the device, date and command."""
    lines = [
        f"GPU suite on {meta.get('device')}, {meta.get('date')}: `{meta.get('command')}`",
        f"(torch {meta.get('torch')}, diffusers {meta.get('diffusers')}, wanflow {meta.get('commit')}; "
        f"matmul peak {fmt(meta.get('peak_tflops'), '.1f')} TFLOP/s, {meta.get('peak_what')})",
        "",
        "| stage | measurement | status | seconds | TFLOP/s | of peak | peak GiB | rel. error | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["stage"], r["what"], r["status"], fmt(r["seconds"], ".3f"), fmt(r.get("tflops"), ".4g")]
        cells += [fmt(r.get("of_peak"), ".1%"), fmt(r["peak_gib"], ".2f"), fmt(r["rel_err"], ".2e"), r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    stage_s = meta.get("stage_seconds", {})
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in stage_s.items()), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- stages and their runner


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    run: Callable[[Suite], None]
    fixed_s: float = 0.0  # estimated seconds besides the DiT steps (building, copies, compilation, the VAE)
    steps: dict[str, float] = field(default_factory=dict)  # workload -> wanflow CFG steps' worth of DiT work
    keep: tuple[str, ...] = ()  # entries of suite.keep left for the next stage (the rest is dropped after this one)

    def estimate(self, suite: Suite) -> float:
        """Seconds this stage should take, from stage 1's measured rate once known (the dry run: none)."""
        if suite.dry:
            return 0.0
        return self.fixed_s + sum(n * suite.compute_s(suite.workload(k).flops()) for k, n in self.steps.items())


def stage_device(suite: Suite) -> None:
    """Stage 0: the matmul peak, measured here (``matmul_peak.rate``), which the fractions of peak divide by."""
    n = 256 if suite.dry else 8192
    suite.peak_tflops = max(rate(n, suite.dtype, suite.device.type, 10) for _ in range(2))
    what = f"{suite.dtype_name} matmul {n}^3, best of 20"
    suite.meta.update(peak_tflops=suite.peak_tflops, peak_what=what)
    flops = 2.0 * n**3
    suite.add("0", f"{suite.meta['device']}: {what}", [flops / suite.peak_tflops / 1e12], flops)


def stages() -> list[Stage]:
    """The suite in order of value. The step counts of the estimates assume ``--repeats 2`` (a warm-up and two
    timed calls per side) and diffusers at 1.5x wanflow's time; the fixed seconds cover building, host copies, two
    compilations (3a, 3b) and the VAE."""
    g = gpu_stages
    return [
        Stage("0", "device and matmul peak", stage_device, 10),
        Stage("1", "A14B 480p step vs diffusers", g.stage_a14b_480p, 15, {"a14b-480p": 7.5}, keep=("a14b",)),
        Stage("2a", "A14B 720p step vs diffusers", g.stage_a14b_720p, 10, {"a14b-720p": 2.5}),
        Stage("2b", "TI2V-5B 720p step vs diffusers", g.stage_5b_720p, 10, {"5b-720p": 7.5}),
        Stage("3a", "compile", g.stage_compile, 45, {"a14b-480p": 3}, keep=("ref",)),
        Stage("3b", "FP8 weights", g.stage_fp8, 45, {"a14b-480p": 3}),
        Stage("4", "memory policies", g.stage_memory, 40, {"a14b-480p": 4.5}),
        Stage("4b", "LoRA training, streamed blocks", stage_lora_training, 30, {"a14b-train": 6}),
        Stage("5a", "few-step preset", g.stage_few_step, 5, {"a14b-480p": 2}),
        Stage("5b", "VAE decode", g.stage_vae, 25),
        Stage("5c", "LoRA beside the weights", g.stage_lora, 20, {"a14b-480p": 6}),
    ]


def run_stages(suite: Suite, todo: list[Stage]) -> None:
    """Each stage in turn: skipped when its estimate exceeds the time left, its error recorded without stopping the
    suite, everything freed after it. The budget's alarm cuts the stage in flight; the rest are listed as skipped."""
    times = suite.meta.setdefault("stage_seconds", {})
    for i, stage in enumerate(todo):
        need, left = stage.estimate(suite), suite.remaining()
        if need > left:
            note = f"needs about {need:.0f} s, {max(left, 0):.0f} s left"
            suite.add(stage.key, stage.title, status="skipped", note=note)
            suite.keep.clear()  # what an earlier stage left was for this one
            suite.free()
            continue
        start = time.monotonic()
        try:
            stage.run(suite)
        except BudgetExceeded:
            signal.setitimer(signal.ITIMER_REAL, 0)  # no second alarm while the rows are written
            suite.add(stage.key, stage.title, status="cut", note="the time budget ran out during this stage")
            for later in todo[i + 1 :]:
                suite.add(later.key, later.title, status="skipped", note="the time budget was spent")
            return
        except Exception as e:  # recorded; the next stage still runs, without what this one left behind
            suite.add(stage.key, stage.title, status="error", note=f"{type(e).__name__}: {e}"[:300])
            suite.keep.clear()
        finally:
            times[stage.key] = time.monotonic() - start
            for name in set(suite.keep) - set(stage.keep):
                del suite.keep[name]
            suite.free()
            suite.write()


# ---------------------------------------------------------------- set-up


def describe(device: torch.device) -> dict:
    """What the figures were measured on, with which software."""
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except ImportError as e:
        diffusers_version = f"unavailable ({e})"
    cuda = device.type == "cuda"
    try:  # the device's copy of the tree may come without .git, or the machine without git
        git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    from wanflow.models.attention import available_backends

    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "diffusers": diffusers_version,
        "commit": commit or "unknown",
        "attention_backends": available_backends(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cpu_threads": torch.get_num_threads(),
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out/gpu-suite"))
    p.add_argument("--dry-run", action="store_true", help="CPU, float32, tiny shapes: every stage's code in seconds")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget from start (default 480)")
    p.add_argument(
        "--stages",
        nargs="+",
        default=None,
        help="stages to run, e.g. 1 3b 4 (2: 2a and 2b; default all; 0 always runs)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed calls per step (default 2; dry run 1)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; dry aot_eager)")
    p.add_argument("--memory-budget-gb", type=float, default=24.0, help="the cap of stage 4's block streaming")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="DiT dtype (default bf16; dry run fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (dry run: default 2)")
    return p.parse_args(argv)


def make_suite(args: argparse.Namespace, start: float) -> Suite:
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry-run for the CPU rehearsal")
    if args.threads or args.dry_run:
        torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1))
    device = torch.device("cpu" if args.dry_run else "cuda")
    backend = args.compile_backend or ("aot_eager" if args.dry_run else "inductor")
    suite = Suite(
        device=device,
        dtype=getattr(torch, args.dtype or ("float32" if args.dry_run else "bfloat16")),
        dry=args.dry_run,
        out=args.out,
        deadline=start + args.budget_s,
        repeats=args.repeats or (1 if args.dry_run else 2),
        compile_options={"backend": backend},
        memory_budget_gb=args.memory_budget_gb,
    )
    suite.meta.update(describe(device), budget_s=args.budget_s, dry_run=args.dry_run, compile_backend=backend)
    return suite


def on_alarm(signum, frame) -> None:
    """End the stage in flight. Python drops an exception raised inside a finaliser or weakref callback, so the
    alarm fires again every few seconds until one lands (``main`` disarms it)."""
    signal.setitimer(signal.ITIMER_REAL, 3.0)
    raise BudgetExceeded


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    suite = make_suite(args, start)
    wanted = args.stages or [""]  # a key's prefix: "2" is 2a and 2b
    todo = [s for s in stages() if s.key == "0" or any(s.key.startswith(w) for w in wanted)]
    print(f"GPU suite on {suite.meta['device']}, budget {args.budget_s:.0f} s, writing to {args.out}", flush=True)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, suite.remaining()))
    try:
        run_stages(suite, todo)
    except BudgetExceeded:  # the alarm between two stages
        suite.meta["cut"] = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    suite.meta["total_seconds"] = time.monotonic() - start
    suite.write()
    print(f"done in {suite.meta['total_seconds']:.1f} s: {args.out / 'gpu_suite.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
