"""CPU start-up of the command line: how long ``wanflow generate`` takes to reach its first denoising step on the
built-in model, and how much of that is imports.

    python benchmarks/startup.py                 # 5 runs of each, medians; about a minute on 2 cores
    python benchmarks/startup.py --repeats 9 --json out/startup.json

Every figure is a fresh process started from this folder (``python -m wanflow``, so this tree's wanflow):

- ``python -c pass`` and ``python -c "import torch"``: the floors no change in wanflow can go below;
- ``wanflow --help``;
- ``wanflow generate PROMPT`` (built-in t2v model): wall time from the process start until the denoising bar
  appears on stderr (tqdm draws it before the first step), and to the end of the run;
- the same command under ``python -X importtime``: the sum of the top-level imports' cumulative times over the
  whole run, lazy imports included, so the figure does not depend on where the imports sit in the package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red circle moving right"
MARKER = b"denoising"  # TqdmProgress's label of the denoise bar


def wall(command: list[str]) -> float:
    """Seconds from the start to the end of ``command`` (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def generate(folder: Path, python_flags: tuple[str, ...] = ()) -> tuple[float, float, bytes]:
    """(seconds to the denoising bar, seconds to the end, stderr) of one ``wanflow generate`` run."""
    command = [sys.executable, *python_flags, "-m", "wanflow", "generate", PROMPT, "--save_file", str(folder / "x.mp4")]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err, first = b"", None
    while chunk := os.read(proc.stderr.fileno(), 65536):
        err += chunk
        if first is None and MARKER in err:
            first = time.perf_counter() - start
    if proc.wait() != 0 or first is None:
        raise SystemExit(f"wanflow generate failed or drew no denoising bar:\n{err.decode(errors='replace')[-2000:]}")
    return first, time.perf_counter() - start, err


def import_seconds(stderr: bytes) -> float:
    """Sum of the cumulative times of the top-level imports in ``-X importtime`` output (nested ones are indented
    under the name column, and already counted in their parent's cumulative time)."""
    total = 0
    for line in stderr.decode(errors="replace").splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and not parts[2].startswith("  "):
            if parts[1].strip().isdigit():
                total += int(parts[1])
    return total / 1e6


def measure(repeats: int) -> dict[str, list[float]]:
    """Each figure ``repeats`` times, the kinds interleaved so that load on the machine hits them alike."""
    py = sys.executable
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            figures = {
                "python -c pass": wall([py, "-c", "pass"]),
                "python -c 'import torch'": wall([py, "-c", "import torch"]),
                "wanflow --help": wall([py, "-m", "wanflow", "--help"]),
            }
            first, end, _ = generate(Path(tmp))
            figures.update({"generate: start to first denoising step": first, "generate: start to end": end})
            figures["generate: imports (-X importtime, whole run)"] = import_seconds(
                generate(Path(tmp), ("-X", "importtime"))[2]
            )
            for name, seconds in figures.items():
                runs.setdefault(name, []).append(seconds)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the runs here")
    args = p.parse_args()
    runs = measure(args.repeats)
    print("| what | median (s) | min (s) | runs (s) |\n|---|---|---|---|")
    for name, times in runs.items():
        listed = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {listed} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
