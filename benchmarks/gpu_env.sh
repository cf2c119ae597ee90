# Sourced by the device-side scripts (gpu_suite.sh, gpu_tests.sh): the carried wheels (benchmarks/fetch_gpu_wheels.sh)
# installed into /tmp/site, and the tree on PYTHONPATH (wanflow is not installed there).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! ls .gpu-wheels/diffusers-*.whl >/dev/null 2>&1; then
    echo "no .gpu-wheels/diffusers-*.whl: run 'bash benchmarks/fetch_gpu_wheels.sh' here, and carry .gpu-wheels" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu-wheels/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
