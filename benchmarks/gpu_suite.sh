#!/usr/bin/env bash
# The device side of the GPU suite, the whole of the device call's command (BENCHMARKS.md, "GPU suite"): install the
# carried wheels (benchmarks/fetch_gpu_wheels.sh) into /tmp/site, then run benchmarks/gpu_suite.py into $OUT.
#   bash benchmarks/gpu_suite.sh [gpu_suite.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
if ! ls .gpu-wheels/diffusers-*.whl >/dev/null 2>&1; then
    echo "no .gpu-wheels/diffusers-*.whl: run 'bash benchmarks/fetch_gpu_wheels.sh' here, and carry .gpu-wheels" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu-wheels/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-out/gpu-suite}
mkdir -p "$out"
python3 benchmarks/gpu_suite.py --out "$out" "$@" 2>&1 | tee "$out/gpu_suite.log"
