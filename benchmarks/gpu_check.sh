#!/usr/bin/env bash
# The GPU check (issue 15): every GPU figure of usfast in one run of < 8 minutes on one H200,
# nothing to pip-install (torch + triton + timm + onnx + onnxruntime; TensorRT / DALI / ORT's CUDA
# provider are used when present, else their rows say they are skipped and why).
#
#     bash benchmarks/gpu_check.sh                # on the GPU machine: PYTHON=/path/to/python to pick one
#     bash benchmarks/gpu_check.sh --dry-run      # CPU, tiny sizes: every step's code path, ~2-3 min
#     bash benchmarks/gpu_check.sh --only kernels,train     # a subset (a rerun)
#     bash benchmarks/gpu_check.sh --results DIR  # where gpu_<step>.txt go
#
# Steps, in order (each a script in benchmarks/; one results file each, benchmarks/results/gpu_<step>.txt;
# on a dry run gpu_<step>.txt in $TMPDIR/usfast_gpu_check_dry_run unless --results says otherwise):
#   tests    gpu_tests.py    pytest -m gpu over the whole suite (+ what the image has); warms Triton's cache
#   kernels  kernels.py      Triton attention / loss vs SDPA (flash, cuDNN, efficient, jagged), compiled last
#   train    gpu_train.py    SALT and EMA train steps, ViT-B/16 + predictor_base, bf16: images/s, peak memory
#   embed    gpu_embed.py    ViT-B/16, ViT-S/16 embed throughput vs timm eager fp32 and the model-only ceiling
#   probe    gpu_probe.py    linear probes (sweep, paper) on GPU vs CPU
# Every file: the GPU name, driver, torch / triton versions in its header, rows as they are measured,
# one JSON line last. Each step runs under its own `timeout` (a hang costs that step, not the run),
# and every row inside a step under its own limit, cut to what is left of the step (USFAST_STEP_BUDGET_S),
# so a step ends by itself and writes its JSON line before its timeout. The step limits sum to 460 s;
# the run also stops starting steps past its total budget (TOTAL_S). The files are copied to $OUT
# when that is set. Exit status: 0 when every step passed, 1 otherwise (gpu_summary.txt says which).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PYTHON:-python3}"
DRY=0
ONLY=""
RES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --only) ONLY="$2"; shift ;;
        --only=*) ONLY="${1#--only=}" ;;
        --results) RES="$2"; shift ;;
        --results=*) RES="${1#--results=}" ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's package, no install needed
export PYTHONUNBUFFERED=1
# Per step: its script, its limit (s) on the GPU and on a dry run. GPU limits: what each step needs on an H200 with
# a cold Triton / inductor cache (tests compile ~40 kernel variants; kernels warm the autotuner's
# configs in parallel; train compiles ViT-B + predictor twice; embed compiles and exports two encoders).
STEPS="tests kernels train embed probe"
declare -A SCRIPT=([tests]=gpu_tests.py [kernels]=kernels.py [train]=gpu_train.py [embed]=gpu_embed.py [probe]=gpu_probe.py)
declare -A GPU_S=([tests]=80 [kernels]=105 [train]=155 [embed]=90 [probe]=30)
declare -A DRY_S=([tests]=90 [kernels]=80 [train]=90 [embed]=80 [probe]=40)
for s in ${ONLY//,/ }; do
    [ -n "${SCRIPT[$s]:-}" ] || { echo "gpu_check: unknown step $s; steps: $STEPS" >&2; exit 2; }
done
if [ "$DRY" = 1 ]; then
    RES="${RES:-${TMPDIR:-/tmp}/usfast_gpu_check_dry_run}"
    TOTAL_S=${TOTAL_S:-400}  # ~100 s of CPU; the wall time depends on how busy the 2 cores are
    export TRITON_INTERPRET=1  # the kernels run in Triton's interpreter on the CPU
    export CUDA_VISIBLE_DEVICES=""  # a dry run is a CPU run even on a GPU machine
else
    RES="${RES:-benchmarks/results}"
    TOTAL_S=${TOTAL_S:-470}
    unset TRITON_INTERPRET  # compiled kernels, never the interpreter, on the GPU
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check: no CUDA device visible to $PY; nothing measured (try --dry-run)" >&2
        exit 2
    fi
fi
mkdir -p "$RES"

start=$SECONDS
status=0
summary="$RES/gpu_summary.txt"
echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$DRY" = 1 ] && echo ' DRY RUN (CPU, tiny sizes, no figure)')" > "$summary"
for step in $STEPS; do
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$step,"* ]]; then continue; fi
    limit=$([ "$DRY" = 1 ] && echo "${DRY_S[$step]}" || echo "${GPU_S[$step]}")
    left=$((TOTAL_S - (SECONDS - start)))
    file="$RES/gpu_$step.txt"
    if [ "$left" -lt 15 ]; then
        echo "# gpu_check step $step: not run, the run's $TOTAL_S s budget was spent" | tee "$file"
        echo "$step skipped (budget spent)" >> "$summary"
        status=1
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    args=()
    [ "$DRY" = 1 ] && args+=(--dry-run)
    echo "== gpu_check step $step: benchmarks/${SCRIPT[$step]} (limit $limit s) -> $file"
    t0=$SECONDS
    # rows stop by USFAST_STEP_BUDGET_S, 8 s before the hard timeout: the JSON line gets written
    USFAST_STEP_BUDGET_S=$((limit - 8)) timeout -k 10 "$limit" "$PY" "benchmarks/${SCRIPT[$step]}" "${args[@]}" \
        2>&1 | tee "$file"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) word=passed ;;
        3) word="partial (some rows ran out of time)" ;;
        124|137) word="TIMEOUT after $limit s (rows measured so far are in the file)"; echo "# TIMEOUT: step ran past its $limit s limit" >> "$file" ;;
        *) word="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || status=1
    echo "$step $word in $((SECONDS - t0)) s" | tee -a "$summary"
done
echo "total $((SECONDS - start)) s" | tee -a "$summary"
if [ -n "${OUT:-}" ]; then
    cp "$RES"/gpu_*.txt "$OUT/" || status=1
fi
echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) (results in $RES)"
exit $status
