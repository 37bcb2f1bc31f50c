#!/usr/bin/env bash
# MegaFace Challenge 1 with facerco: features from MODEL on the aligned test pack, then the exact 1:N evaluator.
# All logic lives in `facerco eval megaface`; this script only names the test-pack files (see README.md).
#
#   eval/megaface/run.sh MODEL TESTPACK [OUT] [extra `facerco eval megaface` options...]
#
# MODEL: a facerco .safetensors checkpoint (route points too), an .onnx file, or an insightface .pth
# (then add `--arch iresnet100` or the matching name to the extra options).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0"
  exit 2
fi
MODEL=$1
PACK=$2
OUT=${3:-eval_out/megaface}
shift $(( $# >= 3 ? 3 : 2 ))

NOISE=()
if [ -f "$PACK/facescrub_noises.txt" ] && [ -f "$PACK/megaface_noises.txt" ]; then
  NOISE=(--probe-noise "$PACK/facescrub_noises.txt" --distractor-noise "$PACK/megaface_noises.txt")
fi

exec facerco eval megaface \
  --model "$MODEL" \
  --probes "$PACK/facescrub_images" \
  --distractors "$PACK/megaface_lst" --distractor-root "$PACK/megaface_images" \
  --sizes 10 100 1000 10000 100000 1000000 \
  --far 1e-6 1e-5 1e-4 \
  "${NOISE[@]}" \
  --out "$OUT" "$@"
