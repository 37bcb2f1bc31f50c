#!/usr/bin/env bash
# facerco one-GPU check (issue 8): training, distillation, identification and ONNX numbers on one GPU in <= 8 minutes,
# with no network.
#
# Usage (from anywhere; it runs in the repository root):
#   bash benchmarks/gpu_check.sh             # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run   # on a CPU: the same steps at tiny sizes (checks the script itself)
# Environment:
#   OUT      folder for the JSON files (default bench_out/gpu_check); gpu_check.json summarises every step
#   PYTHON   interpreter (default python3)
#
# Packages. Nothing is downloaded. If `import torch` fails, everything is installed from ./wheels/ with
# `pip install --no-index --find-links wheels/` (bring torch, numpy, opencv-python-headless, PyYAML, safetensors, tqdm,
# onnx, onnxscript, onnxruntime[-gpu] wheels for the machine's Python there); otherwise the interpreter's packages are
# used and only modules that are missing are looked for in ./wheels/. facerco itself is installed with --no-deps
# (its pins, e.g. torch==2.13, never replace the machine's CUDA build); if that fails, PYTHONPATH points at the
# checkout. Optional: faiss-gpu (a 1.6 GB wheel) for the faiss backend, onnxruntime-gpu for the CUDA execution
# provider; without them identification uses the torch CUDA backend and ONNX parity compares PyTorch on the GPU
# with onnxruntime's CPU provider (the JSON records which ran).
#
# Steps (each under its own time limit, so the whole stays under 8 minutes; a failing step is recorded and the
# next one still runs):
#   1. train_throughput.py   teacher iresnet100 and student mbf_0.8m ArcFace training, fp16 AMP, batch 128, 112x112
#                            generated faces: samples/s and peak memory                      (limit 180 s)
#   2. distill_throughput.py student scratch / online r50 / online r100 / anchor cache: samples/s, ratios (limit 120 s)
#   3. gpu_eval_export.py    MegaFace-shaped identification (3,530 probes x 1M x 512) on the GPU; ONNX export of
#                            mbf_0.8m (fp32, fp16) and parity/latency against PyTorch on the GPU   (limit 150 s)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench_out/gpu_check}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
mkdir -p "$OUT_DIR"
START=$(date +%s)
STEPS=()

note() { echo "[gpu_check $(($(date +%s) - START))s] $*"; }

# --- 1. packages -------------------------------------------------------------------------------------------------
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if [ -d wheels ]; then
        note "torch missing: installing every wheel in ./wheels (no index)"
        "$PY" -m pip install --quiet --no-index --find-links wheels wheels/*.whl || { note "wheel install failed"; exit 2; }
    else
        note "torch is not importable and there is no ./wheels folder to install it from"; exit 2
    fi
fi
declare -A PKG=([numpy]=numpy [cv2]=opencv-python-headless [yaml]=PyYAML [safetensors]=safetensors [tqdm]=tqdm
                [onnx]=onnx [onnxscript]=onnxscript [onnxruntime]=onnxruntime [matplotlib]=matplotlib)
for mod in "${!PKG[@]}"; do
    if ! "$PY" -c "import $mod" >/dev/null 2>&1; then
        if [ -d wheels ]; then
            note "module $mod missing: pip install --no-index --find-links wheels ${PKG[$mod]}"
            "$PY" -m pip install --quiet --no-index --find-links wheels "${PKG[$mod]}" || note "could not install ${PKG[$mod]}"
        else
            note "module $mod missing and no ./wheels folder: steps that need it will fail"
        fi
    fi
done
if ! "$PY" -c "import facerco" >/dev/null 2>&1; then
    if ! "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation -e . >/dev/null 2>&1; then
        note "pip install --no-deps -e . failed; using PYTHONPATH=$ROOT"
    fi
    "$PY" -c "import facerco" >/dev/null 2>&1 || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF' >"$OUT_DIR/environment.txt" 2>&1
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for mod in ("numpy", "cv2", "onnx", "onnxruntime", "faiss"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"), *( [m.get_available_providers()] if mod == "onnxruntime" else []))
    except ImportError as exc:
        print(mod, "missing:", exc)
EOF
cat "$OUT_DIR/environment.txt"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L | tee -a "$OUT_DIR/environment.txt"

if [ "$DRY" = 1 ]; then
    DEV=cpu
    TRAIN_ARGS=(--models iresnet_tiny mbf_0.8m --image-size 64 --batch 4 --window 1 --windows 2)
    DISTILL_ARGS=(--teachers iresnet_tiny --image-size 64 --batch 4 --window 1 --windows 2)
    EVAL_ARGS=(--distractors 5000 --probes 100 --identities 10 --export-model iresnet_tiny --repeats 1)
else
    DEV=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { note "no CUDA GPU (use --dry-run on a CPU)"; exit 3; }
    TRAIN_ARGS=(--models iresnet100 mbf_0.8m --windows 4)
    DISTILL_ARGS=(--teachers iresnet50 iresnet100 --windows 3)
    EVAL_ARGS=(--distractors 1000000 --probes 3530 --identities 80)
fi

# --- 2. steps ----------------------------------------------------------------------------------------------------
run_step() {  # name, limit_s, command...
    local name=$1 limit=$2; shift 2
    local t0 rc
    t0=$(date +%s)
    note "$name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    note "$name: exit $rc after $(($(date +%s) - t0)) s"
    STEPS+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t0)), \"limit_s\": $limit}")
}

run_step train_throughput 180 "$PY" benchmarks/train_throughput.py --device "$DEV" "${TRAIN_ARGS[@]}" \
    --out "$OUT_DIR/train_throughput.json"
run_step distill_throughput 120 "$PY" benchmarks/distill_throughput.py --device "$DEV" "${DISTILL_ARGS[@]}" \
    --out "$OUT_DIR/distill_throughput.json"
run_step gpu_eval_export 150 "$PY" benchmarks/gpu_eval_export.py --device "$DEV" "${EVAL_ARGS[@]}" \
    --data "${TMPDIR:-/tmp}/facerco_gpu_check" --out "$OUT_DIR/gpu_eval_export.json"

# --- 3. summary --------------------------------------------------------------------------------------------------
JOINED=$(IFS=,; echo "${STEPS[*]}")
FAILED=0
for s in "${STEPS[@]}"; do case "$s" in *'"exit": 0,'*) ;; *) FAILED=$((FAILED + 1)) ;; esac; done
echo "{\"dry_run\": $DRY, \"device\": \"$DEV\", \"total_s\": $(($(date +%s) - START)), \"failed_steps\": $FAILED, \"steps\": [$JOINED]}" \
    >"$OUT_DIR/gpu_check.json"
note "done: $FAILED failed step(s); JSON in $OUT_DIR"
exit $((FAILED > 0 ? 4 : 0))
