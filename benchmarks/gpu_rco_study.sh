#!/usr/bin/env bash
# facerco face RCO study on one GPU (issue 22, item 4): LFW at 112x112 aligned by facerco (dlib, central), identities
# split as facerco.data.lfw_split (validation != test), an iresnet50 teacher with a step route validated on the
# validation part, mbf_0.8m students (scratch on the pilot seed only; mimic_final, early, rco_eeis_multi, lockstep,
# phase on every counted seed), pilot gate, test 1:N rank-1, Holm-corrected paired analysis; <= 9 minutes on one
# H100, no network. The protocol, the throughput assumptions and the time arithmetic: benchmarks/README.md.
#
# Usage (from anywhere; it runs in the repository root):
#   python benchmarks/gpu_rco_study.py pack                 # once, on a CPU: bench_out/lfw112_pack (49 MiB)
#   bash benchmarks/gpu_rco_study.sh                        # one CUDA GPU (carry bench_out/lfw112_pack), <= 9 min
#   bash benchmarks/gpu_rco_study.sh --dry-run              # a CPU: the same steps at tiny sizes (a few LFW people)
#   bash benchmarks/gpu_rco_study.sh --budget-s 420 --seeds 0 1 2   # any study option after
# Data: the pack named by --pack or $FACERCO_LFW_PACK, else bench_out/lfw112_pack or shared/lfw112_pack in the
# checkout; with none, the LFW photos ($FACERCO_REAL_DATA, shared/data or ../shared/data) are packed on the machine
# (dlib alignment where dlib loads, else the fixed-box crop; the JSON says which). The device machine gets neither
# ../shared nor dlib: carry the pack. A dry run packs a few LFW people, or generates faces where LFW is absent.
# Environment:
#   OUT     folder for the files that come back (default bench_out/gpu_rco_study): gpu_rco_study.json (every step,
#           the data, the route, the gate, every run, the analysis, the plan beside the measured rates, provenance),
#           gpu_rco_study.md (the table), one log per step, environment.txt -- seven files, nothing deeper
#   WORK    folder for the big files: data arrays, route checkpoints, anchor cache, student runs (default
#           ${TMPDIR:-/tmp}/facerco_gpu_rco; a rerun reuses what is finished there)
#   PYTHON  interpreter (default python3)
#   FACERCO_SOURCE_COMMIT  the commit the tree was copied from, where .git is missing (recorded with a hash of the
#           source files; default: git rev-parse HEAD when git works here)
#
# Packages. Nothing is downloaded. If `import torch` fails, every wheel in ./wheels/ is installed with
# `pip install --no-index`; otherwise the interpreter's packages are used, and a missing module is looked for in
# ./wheels/. facerco is installed with --no-deps (its pins never replace the machine's CUDA build of torch); if that
# fails, PYTHONPATH points at the checkout.
#
# Steps (each under its own time limit; the whole stays within --budget-s, default 510 s on a GPU):
#   data      decode the pack into arrays (or pack the photos first)                           (limit 120 s)
#   teacher   iresnet50 route (a validated point per epoch), anchor cache, probe embeddings   (limit 210 s)
#   students  pilot seed, gate, counted seeds while the time left fits a whole seed           (what is left)
#   report    whole seeds only: table, Holm-corrected paired analysis, power, JSON + Markdown  (limit  30 s)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench_out/gpu_rco_study}
WORK_DIR=${WORK:-${TMPDIR:-/tmp}/facerco_gpu_rco}
DRY=0
BUDGET=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --budget-s)
            if [ $# -lt 2 ]; then echo "gpu_rco_study.sh: --budget-s needs a number of seconds" >&2; exit 2; fi
            BUDGET=$2; shift ;;
        *) EXTRA+=("$1") ;;
    esac
    shift
done
mkdir -p "$OUT_DIR" "$WORK_DIR"
START=$(date +%s)
STEPS=()

note() { echo "[gpu_rco_study $(($(date +%s) - START))s] $*"; }
elapsed() { echo $(($(date +%s) - START)); }

# --- packages: only what is missing, only from ./wheels ------------------------------------------------------------
from_wheels() {  # pip names...
    if [ ! -d wheels ]; then note "no ./wheels folder to install $* from"; return 1; fi
    "$PY" -m pip install --quiet --no-index --find-links wheels "$@"
}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    from_wheels wheels/*.whl || { note "torch is not importable and could not be installed"; exit 2; }
fi
MISSING=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in "numpy cv2 yaml safetensors tqdm scipy matplotlib".split() if u.find_spec(m) is None))')
for mod in $MISSING; do
    case $mod in cv2) pkg=opencv-python-headless ;; yaml) pkg=PyYAML ;; *) pkg=$mod ;; esac
    from_wheels "$pkg" || note "module $mod missing: the steps that need it will fail"
done
if ! "$PY" -c "import facerco" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation -e . >/dev/null 2>&1 \
        || note "pip install --no-deps -e . failed; using PYTHONPATH=$ROOT"
    "$PY" -c "import facerco" >/dev/null 2>&1 || export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' >"$OUT_DIR/environment.txt" 2>&1
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"

# --- sizes ---------------------------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    BUDGET=${BUDGET:-600}  # a shared CPU is slow and uneven; the tiny steps need ~1-2 minutes
    LIMITS=(120 300 120)  # data, teacher, report
    # 16 px is the smallest input both families take; iresnet18 is iresnet50's family and 512-d embedding (the same
    # projector and cache shapes) at a third of its CPU cost; 4 people x 4 photos in batches of 16 (one step per
    # epoch, 4 epochs for the two lr drops); --ignore-gate so the counted seed and the analysis run
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    SIZES=(--device cpu --amp off --dry-run --image-size 16 --teacher iresnet18 --train-ids 4 --images-per-id 4
           --val-ids 4 --val-distractors 6 --test-ids 4 --test-distractors 8 --eval-images-per-id 3 --epochs 4
           --batch 16 --seeds 0 1 --workers 2 --job-limit-s 120 --ignore-gate)
else
    BUDGET=${BUDGET:-510}
    LIMITS=(120 210 30)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { note "no CUDA GPU (use --dry-run on a CPU)"; exit 3; }
    SIZES=(--device cuda --amp bf16)
fi
COMMON=(--work "$WORK_DIR" --out "$OUT_DIR" --plan-budget-s "$BUDGET" "${SIZES[@]}" "${EXTRA[@]}")
if [ -z "${FACERCO_SOURCE_COMMIT:-}" ]; then
    FACERCO_SOURCE_COMMIT=$(git rev-parse HEAD 2>/dev/null || true)
fi
export FACERCO_SOURCE_COMMIT
STUDY=(env PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_rco_study.py)

# --- steps ---------------------------------------------------------------------------------------------------------
run_step() {  # name, limit_s, command...
    local name=$1 limit=$2; shift 2
    local t0 rc
    t0=$(date +%s)
    note "$name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    note "$name: exit $rc after $(($(date +%s) - t0)) s"
    STEPS+=("{\"step\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t0)), \"limit_s\": $limit}")
}
steps_json() { local IFS=,; echo "[${STEPS[*]}]"; }

run_step data "${LIMITS[0]}" "${STUDY[@]}" data "${COMMON[@]}"
run_step teacher "${LIMITS[1]}" "${STUDY[@]}" teacher "${COMMON[@]}"
LEFT=$((BUDGET - $(elapsed) - LIMITS[2] - 5))
if [ "$LEFT" -lt 30 ]; then LEFT=30; fi
# the study stops launching seeds 25 s before the step's limit: time for the pool to finish and the record to land
run_step students "$LEFT" "${STUDY[@]}" students "${COMMON[@]}" --budget-s $((LEFT - 25))
steps_json >"$WORK_DIR/steps.json"
run_step report "${LIMITS[2]}" "${STUDY[@]}" report "${COMMON[@]}" --steps-json "$WORK_DIR/steps.json"

# --- summary -------------------------------------------------------------------------------------------------------
FAILED=0
for s in "${STEPS[@]}"; do case "$s" in *'"exit": 0,'*) ;; *) FAILED=$((FAILED + 1)) ;; esac; done
case "${STEPS[${#STEPS[@]}-1]}" in
    *'"exit": 0,'*) ;;
    *) echo "{\"benchmark\": \"gpu_rco_study\", \"dry_run\": $DRY, \"report_failed\": true, \"steps\": $(steps_json)}" \
           >"$OUT_DIR/gpu_rco_study.json" ;;
esac
note "done in $(elapsed) s (budget $BUDGET s): $FAILED failed step(s); results in $OUT_DIR"
exit $((FAILED > 0 ? 4 : 0))
