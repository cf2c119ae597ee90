#!/usr/bin/env bash
# Wheels that the lent GPU machines lack, fetched here into the ignored folder .gpu-wheels/, which the device call
# carries (BENCHMARKS.md, "GPU suite"). Their image has Python 3.12 with torch, transformers, safetensors,
# accelerate, numpy, pillow and tqdm (/work/.library/device/KINDS.md); it has no diffusers, ftfy or PyAV.
#
#   bash benchmarks/fetch_gpu_wheels.sh [PYTHON_VERSION]      # default 3.12
#
# Versions are those installed here, so the device runs what CI tests with. --no-deps: nothing else (no torch, no
# CUDA wheels) is pulled in. PyAV (35 MB) is left out: the tree (about 29 MB) and the carried wheels must stay under
# the device tool's 64 MiB, and the suite writes no video.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
dest=.gpu-wheels
pinned() {  # NAME==VERSION as installed here, or NAME alone
    python -c "import importlib.metadata as m; print('$1==' + m.version('$1'))" 2>/dev/null || echo "$1"
}
# diffusers: stages 1-2 compare with its WanTransformer3DModel. ftfy + wcwidth: wanflow's prompt cleaning, for the
# pipeline-level scripts (benchmarks/pipeline_vs_diffusers.py) on the same machine. pytest + pluggy + iniconfig: the
# tests that need CUDA (benchmarks/gpu_tests.sh).
packages=("$(pinned diffusers)" "$(pinned ftfy)" "$(pinned wcwidth)" "$(pinned pytest)" "$(pinned pluggy)" "$(pinned iniconfig)")
rm -rf "$dest"
mkdir -p "$dest"
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "${packages[@]}"
ls -l "$dest"
wheels=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s += $1} END {print s}')
total=$((wheels + tree))
echo "wheels $((wheels / 1024)) KiB + tree $((tree / 1024)) KiB = $((total / 1024 / 1024)) MiB of the device tool's 64 MiB"
if ((total > 64 * 1024 * 1024)); then
    echo "too large to travel: carry fewer wheels" >&2
    exit 1
fi
