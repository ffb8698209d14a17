#!/usr/bin/env bash
# The GPU benchmark suite: `aigi bench` over vit-b-32, vit-b-16 and vit-l-14 with every runtime this machine has,
# on one H100/H200-class GPU, in about 6-7 minutes including setup. Run from the repository root:
#
#     bash benchmarks/gpu_suite.sh OUT_DIR
#
# Nothing is downloaded: the repository itself is installed with `pip install --no-deps -e .` into the machine's
# Python (or put on the path through a small shim when pip cannot), the Triton cells use a carried server pack
# (benchmarks/server_pack.py: tritonserver, its Python backend, tritonclient and numpy<2 for the backend stub) when
# one is there, and every runtime whose package is missing (TensorRT, onnxruntime-gpu, Triton) is listed as
# skipped, with its reason, in each model's BENCH.md. Without a GPU it prints one line, writes
# OUT_DIR/skipped.json and exits 0.
#
# Environment:
#   PYTHON            interpreter (default: python3)
#   SUITE_MODELS      presets to run (default: "vit-b-32 vit-b-16 vit-l-14")
#   SUITE_BUDGETS     seconds per model, same order (default: "80 90 170")
#   SUITE_SERVER_PACK a server pack (folder or .tar.xz from `python -m aigi.benchmarks.server_pack build`);
#                     default: .serverpack/*.tar.xz in the repository when there is one
#   SUITE_CHECKPOINT  a run directory for agreement on trained weights (default: none, random-init parity)
#   SUITE_PACK=1      leave only SUITE.md, suite.json and suite.tar.gz (everything) in OUT_DIR
#   SUITE_ARGS        extra `aigi bench` flags for every model
#   SUITE_ALLOW_CPU=1 run without a GPU (to test this script itself); SUITE_NO_PIP=1 use the shim, not pip
set -uo pipefail

OUT="${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}"
PYTHON="${PYTHON:-python3}"
MODELS=(${SUITE_MODELS:-vit-b-32 vit-b-16 vit-l-14})
BUDGETS=(${SUITE_BUDGETS:-80 90 170})
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STARTED=$(date +%s)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

json_escape() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

no_gpu() {
  echo "gpu_suite: no CUDA GPU found ($1); nothing to benchmark"
  printf '{"skipped": true, "reason": "no CUDA GPU found: %s", "time": "%s"}\n' \
    "$(json_escape "$1")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$OUT/skipped.json"
  exit 0
}

# -- is there a GPU? (nvidia-smi first: it answers in milliseconds and needs no Python) --------------------------
if [[ "${SUITE_ALLOW_CPU:-0}" != "1" ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    no_gpu "nvidia-smi is not installed"
  fi
  if ! nvidia-smi -L >/dev/null 2>&1; then
    no_gpu "nvidia-smi sees no device"
  fi
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    no_gpu "no Python interpreter '$PYTHON' to drive it"
  fi
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    no_gpu "PyTorch in $PYTHON cannot use the GPU"
  fi
fi

# -- install the repository itself (no dependencies: nothing can be fetched here) -------------------------------
cd "$REPO_ROOT"
INSTALL="pip install --no-deps --no-build-isolation -e ."
: >"$OUT/install.log"
if [[ "${SUITE_NO_PIP:-0}" == "1" ]] ||
  ! "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1 ||
  ! (cd /tmp && "$PYTHON" -c 'import aigi.benchmarks.harness' >>"$OUT/install.log" 2>&1); then
  # A shim package tree that maps aigi.* onto the repository's folders, as pyproject's package-dir does.
  SHIM="$(mktemp -d)"
  mkdir -p "$SHIM/aigi"
  for f in "$REPO_ROOT"/src/aigi/*.py "$REPO_ROOT"/src/aigi/py.typed; do ln -s "$f" "$SHIM/aigi/"; done
  ln -s "$REPO_ROOT/training" "$SHIM/aigi/training"
  ln -s "$REPO_ROOT/export" "$SHIM/aigi/export"
  ln -s "$REPO_ROOT/client" "$SHIM/aigi/client"
  ln -s "$REPO_ROOT/benchmarks" "$SHIM/aigi/benchmarks"
  ln -s "$REPO_ROOT/model_repository/python_models" "$SHIM/aigi/triton_models"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  INSTALL="a PYTHONPATH shim at $SHIM (pip install not used or failed; see install.log)"
fi
if ! "$PYTHON" -c 'import aigi.benchmarks.harness' >>"$OUT/install.log" 2>&1; then
  echo "gpu_suite: aigi cannot be imported with $PYTHON (see $OUT/install.log)" >&2
  exit 1
fi
echo "gpu_suite: aigi from $INSTALL; models: ${MODELS[*]}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" ${SHIM:+"$SHIM"}' EXIT

# -- the Triton server: a carried pack when there is one, else whatever aigi finds (the wheel), else skipped ------
PACK="${SUITE_SERVER_PACK:-$(ls "$REPO_ROOT"/.serverpack/*.tar.xz 2>/dev/null | head -n 1)}"
SERVER="the nvidia-pytriton wheel if installed"
if [[ -n "$PACK" ]]; then
  if "$PYTHON" -m aigi.benchmarks.server_pack install "$PACK" --into "$WORK/serverpack" \
    >"$WORK/serverpack.env" 2>"$WORK/serverpack.log"; then
    source "$WORK/serverpack.env"
    SERVER="pack $(basename "$PACK") ($(tail -n 1 "$WORK/serverpack.log" | sed 's/^server_pack: //'))"
  else
    SERVER="pack $(basename "$PACK") FAILED to install: $(tail -n 1 "$WORK/serverpack.log")"
  fi
  cat "$WORK/serverpack.log" >>"$OUT/install.log"
fi
echo "gpu_suite: Triton server: $SERVER"

# -- one bench per model, each under its own time budget ----------------------------------------------------------
if [[ "${SUITE_PACK:-0}" == "1" ]]; then RESULTS="$WORK/results"; else RESULTS="$OUT"; fi
mkdir -p "$RESULTS"
STATUS_JSON=""
for i in "${!MODELS[@]}"; do
  model="${MODELS[$i]}"
  budget="${BUDGETS[$i]:-150}"
  dir="$RESULTS/$model"
  mkdir -p "$dir"
  # The GPU runtimes (torch-*, ort-cuda-*, tensorrt-*, triton-torch-*: every one registered) run on every model;
  # the CPU-backed ones (ONNX Runtime on the CPU, in-process or served by Triton as aigi_cpu) only on the small
  # models, where a CPU pass fits the budget. INT8 and HTTP variants are the CPU story and are left out here.
  case "$model" in
    vit-l-14)  # the targets' batch first: the budget stops later cells, never these
      sweep=(--batch-sizes 128,32 --concurrency 1,2)
      leave='ort-cpu-*,triton-tensor-*,triton-bytes-*'
      why="CPU-backed runtimes are measured on the small models only (time budget)" ;;
    vit-b-16)
      sweep=(--batch-sizes 32,8,1 --concurrency 1,2)
      leave='ort-cpu-*,triton-tensor-*,triton-bytes-*'
      why="CPU-backed runtimes are measured on the small models only (time budget)" ;;
    *)
      sweep=(--batch-sizes 1,8,32 --concurrency 1,2,4)
      leave='ort-cpu-int8,triton-tensor-*-int8,triton-bytes-*-int8,triton-tensor-http-*,triton-bytes-http-*'
      why="INT8 and HTTP variants are CPU-serving comparisons, left out of the GPU suite (time budget)" ;;
  esac
  extra=("${sweep[@]}" --exclude "$leave" --exclude-reason "$why")
  if [[ -n "${SUITE_CHECKPOINT:-}" ]]; then extra+=(--checkpoint "$SUITE_CHECKPOINT"); fi
  echo "gpu_suite: $model (budget ${budget}s)"
  t0=$(date +%s)
  # the harness stops starting cells once its budget is spent; timeout is the backstop for a stuck set-up
  timeout -k 10 $((budget + 60)) "$PYTHON" -m aigi.cli bench --model "$model" \
    --duration 1.0 --min-iters 10 --warmup 5 --agreement-images 128 --budget "$budget" \
    --workdir "$WORK/$model" --out "$dir" \
    "${extra[@]}" ${SUITE_ARGS:-} >"$dir/bench.log" 2>&1
  code=$?
  seconds=$(($(date +%s) - t0))
  case $code in
    0) state="ok" ;;
    124 | 137) state="timed out after ${seconds}s" ;;
    *) state="failed (exit $code; see $model/bench.log)" ;;
  esac
  echo "gpu_suite: $model: $state in ${seconds}s"
  tail -n 4 "$dir/bench.log" | sed 's/^/    /'
  STATUS_JSON+="${STATUS_JSON:+, }\"$model\": {\"status\": \"$(json_escape "$state")\", \"seconds\": $seconds, \"budget_s\": $budget}"
done

# -- the suite's summary: each runtime's best cell, x eager FP32, fraction of the bf16 peak, skips, GPU targets ---
"$PYTHON" -m aigi.benchmarks.suite_report "$RESULTS" "$OUT" "{${STATUS_JSON}}" "$INSTALL" "$SERVER" \
  "$(($(date +%s) - STARTED))" || echo "gpu_suite: the summary failed (see above); per-model results are in place" >&2
if [[ "${SUITE_PACK:-0}" == "1" ]]; then
  tar czf "$OUT/suite.tar.gz" -C "$RESULTS" . && rm -f "$OUT/install.log"
fi
echo "gpu_suite: done in $(($(date +%s) - STARTED))s; results in $OUT"
