#!/usr/bin/env bash
# One prepared GPU check for the Triton kernels (issue #5): GPU unit tests, then the benchmark.
# Budget: < 4 minutes on an H100/H200 (hard timeouts below), pip-free: needs only the python that
# holds torch + triton (+ pytest for the tests). Run from anywhere:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to pick the interpreter
#
# Writes benchmarks/results/kernels_gpu_tests.txt and benchmarks/results/kernels_gpu.txt (and
# copies both to $OUT when that is set). Exit status: 0 only if every step passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RES=benchmarks/results
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # compiled kernels, never the interpreter, on the GPU
status=0

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to $PY; nothing checked, no results written" >&2
    exit 2
fi

header() {
    echo "# $1"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) | $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    "$PY" -c 'import torch, triton, sys; print(f"# python {sys.version.split()[0]} | torch {torch.__version__} | triton {triton.__version__} | cuda {torch.cuda.is_available()}")'
}

# 1. Correctness of the compiled kernels (fixed configs + one autotuned case), padding skip, loss memory.
{
    header "pytest -m gpu tests/kernels/test_kernel_gpu.py"
    timeout 100 "$PY" -m pytest -m gpu tests/kernels/test_kernel_gpu.py -q -p no:cacheprovider -x
} 2>&1 | tee "$RES/kernels_gpu_tests.txt" || status=1

# 2. Benchmark on ViT-B/16 SALT shapes vs SDPA flash / eager / torch.compile (autotuned kernels).
{
    header "python benchmarks/kernels.py"
    timeout 140 "$PY" benchmarks/kernels.py
} 2>&1 | tee "$RES/kernels_gpu.txt" || status=1

if [ -n "${OUT:-}" ]; then
    cp "$RES/kernels_gpu_tests.txt" "$RES/kernels_gpu.txt" "$OUT/" || status=1
fi
echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
