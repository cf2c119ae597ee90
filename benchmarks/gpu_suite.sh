#!/usr/bin/env bash
# The device side of the GPU suite, the whole of the device call's command (BENCHMARKS.md, "GPU suite"): install the
# carried wheels (benchmarks/fetch_gpu_wheels.sh) into /tmp/site, then run benchmarks/gpu_suite.py into $OUT.
#   bash benchmarks/gpu_suite.sh [gpu_suite.py options]
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
out=${OUT:-out/gpu-suite}
mkdir -p "$out"
python3 benchmarks/gpu_suite.py --out "$out" "$@" 2>&1 | tee "$out/gpu_suite.log"
