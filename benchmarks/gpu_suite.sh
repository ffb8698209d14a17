#!/usr/bin/env bash
# The GPU benchmark suite: `aigi bench` over vit-b-32, vit-b-16 and vit-l-14 with every runtime this machine has,
# on one H100/H200-class GPU, in about 8 minutes including setup. Run from the repository root:
#
#     bash benchmarks/gpu_suite.sh OUT_DIR
#
# Nothing is downloaded: the repository itself is installed with `pip install --no-deps -e .` into the machine's
# Python (or put on the path through a small shim when pip cannot), and every runtime whose package is missing
# (TensorRT, onnxruntime-gpu, Triton) is listed as skipped, with its reason, in each model's BENCH.md.
# Without a GPU it prints one line, writes OUT_DIR/skipped.json and exits 0.
#
# Environment:
#   PYTHON            interpreter (default: python3)
#   SUITE_MODELS      presets to run (default: "vit-b-32 vit-b-16 vit-l-14")
#   SUITE_BUDGETS     seconds per model, same order (default: "110 130 170")
#   SUITE_CHECKPOINT  a run directory for agreement on trained weights (default: none, random-init parity)
#   SUITE_PACK=1      leave only SUITE.md, suite.json and suite.tar.gz (everything) in OUT_DIR
#   SUITE_ARGS        extra `aigi bench` flags for every model
#   SUITE_ALLOW_CPU=1 run without a GPU (to test this script itself); SUITE_NO_PIP=1 use the shim, not pip
set -uo pipefail

OUT="${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}"
PYTHON="${PYTHON:-python3}"
MODELS=(${SUITE_MODELS:-vit-b-32 vit-b-16 vit-l-14})
BUDGETS=(${SUITE_BUDGETS:-110 130 170})
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
  for f in "$REPO_ROOT"/aigi/*.py; do ln -s "$f" "$SHIM/aigi/"; done
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

# -- one bench per model, each under its own time budget ----------------------------------------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [[ "${SUITE_PACK:-0}" == "1" ]]; then RESULTS="$WORK/results"; else RESULTS="$OUT"; fi
mkdir -p "$RESULTS"
STATUS_JSON=""
for i in "${!MODELS[@]}"; do
  model="${MODELS[$i]}"
  budget="${BUDGETS[$i]:-150}"
  dir="$RESULTS/$model"
  mkdir -p "$dir"
  extra=()
  if [[ "$model" != "vit-b-32" ]]; then
    # a CPU pass over the larger towers would eat the whole budget; vit-b-32 carries the CPU comparison
    extra+=(--exclude 'ort-cpu-*' --exclude-reason "CPU ONNX Runtime is measured on vit-b-32 only (time budget)")
  fi
  if [[ -n "${SUITE_CHECKPOINT:-}" ]]; then extra+=(--checkpoint "$SUITE_CHECKPOINT"); fi
  echo "gpu_suite: $model (budget ${budget}s)"
  t0=$(date +%s)
  # the harness stops starting cells once its budget is spent; timeout is the backstop for a stuck set-up
  timeout -k 10 $((budget + 60)) "$PYTHON" -m aigi.cli bench --model "$model" \
    --batch-sizes 1,8,32 --concurrency 1,2,4 --duration 1.0 --min-iters 10 --warmup 5 \
    --agreement-images 128 --budget "$budget" --workdir "$WORK/$model" --out "$dir" \
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

# -- the suite's summary: each model's headline rows and skips ----------------------------------------------------
"$PYTHON" - "$RESULTS" "$OUT" "{${STATUS_JSON}}" "$INSTALL" "$(($(date +%s) - STARTED))" <<'PY'
import json, sys
from pathlib import Path

results, out, status, install, total = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lines = ["# aigi GPU suite", "", f"Installed: {install}. Total wall time: {total} s.", ""]
suite = {"models": status, "install": install, "wall_s": total}
env_done = False
for model, entry in status.items():
    lines += [f"## {model}: {entry['status']} ({entry['seconds']} s of {entry['budget_s']} s)", ""]
    bench = results / model / "bench.json"
    if not bench.is_file():
        lines += ["No results written.", ""]
        continue
    data = json.loads(bench.read_text())
    if not env_done:
        env = data["environment"]
        gpu = env.get("gpu") or {}
        peak = data.get("gpu_peak") or {}
        lines.insert(3, f"GPU: {gpu.get('name')} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}); "
                        f"measured bf16 matmul peak {peak.get('tflops', float('nan')):.0f} TFLOP/s; "
                        f"torch {env['libraries'].get('torch')}, onnxruntime {env['libraries'].get('onnxruntime')}.\n")
        env_done = True
    best = {}
    for cell in data["cells"]:
        if cell.get("status") == "ok" and cell["images_per_s"] > best.get(cell["runtime"], {}).get("images_per_s", 0):
            best[cell["runtime"]] = cell
    lines += ["| runtime | best images/s | batch | conc | p50 ms | speed-up | of GPU peak |", "|---|---|---|---|---|---|---|"]
    for name, cell in best.items():
        frac = cell.get("peak_fraction")
        lines.append(f"| {name} | {cell['images_per_s']:.1f} | {cell['batch']} | {cell['concurrency']} | "
                     f"{cell['p50_ms']:.2f} | {(cell.get('speedup') or float('nan')):.2f}x | "
                     f"{'–' if frac is None else f'{100 * frac:.1f}%'} |")
    skipped = {n: e["reason"] for n, e in data["runtimes"].items() if e["status"] != "ok"}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{n}` ({r})" for n, r in skipped.items())]
    if data.get("skipped_cells"):
        lines.append(f"{len(data['skipped_cells'])} cells left out when the time budget ran out.")
    lines += ["", f"Full table: {model}/BENCH.md", ""]
    suite[model] = {"best": best, "skipped": skipped}
(out / "SUITE.md").write_text("\n".join(lines) + "\n")
(out / "suite.json").write_text(json.dumps(suite, indent=2, default=str) + "\n")
print("\n".join(lines))
PY
if [[ "${SUITE_PACK:-0}" == "1" ]]; then
  tar czf "$OUT/suite.tar.gz" -C "$RESULTS" . && rm -f "$OUT/install.log"
fi
echo "gpu_suite: done in $(($(date +%s) - STARTED))s; results in $OUT"
