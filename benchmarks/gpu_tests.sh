#!/usr/bin/env bash
# The tests that need CUDA (pytest -m gpu: side-stream prefetch, block streaming in training), on the device after the
# suite (BENCHMARKS.md, "GPU suite"); about half a minute. Output in $OUT/gpu_tests.log.
#   bash benchmarks/gpu_tests.sh [pytest options]
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
out=${OUT:-out/gpu-suite}
mkdir -p "$out"
# the tests' conftest asks for deterministic algorithms, which cuBLAS grants only with a fixed workspace
CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/runtime/test_offload.py tests/runtime/test_block_stream.py "$@" 2>&1 \
    | tee "$out/gpu_tests.log"
