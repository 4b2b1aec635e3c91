#!/usr/bin/env bash
# Q-DETR ablation on the small DETR and the synthetic shapes set: at 4-4-8 and 2-2-8, the quantized student before
# training, baseline QAT, +DA, +FQM and DA+FQM (Q-DETR), each imported with `onnxquant qat-import` and measured with
# `onnxquant eval` on models/data/eval.{npz,json}; the real-valued teacher is measured the same way.
#
#   src/QatBridge/qdetr_ablation.sh OUT_DIR [STAGE1_STEPS] [STAGE2_STEPS] [BATCH]
#
# Variants that differ only in stage 2 share one stage-1 checkpoint (baseline and +DA: stage 1 without FQM;
# +FQM and Q-DETR: stage 1 with FQM), as stage 1 keeps encoder and decoder real-valued and DA lives in the decoder.
# Writes OUT_DIR/table.md and OUT_DIR/<bits>/<variant>/...; the log goes to stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: qdetr_ablation.sh OUT_DIR [STAGE1_STEPS] [STAGE2_STEPS] [BATCH]}
S1=${2:-10}
S2=${3:-40}
BATCH=${4:-2}
RT="$ROOT/src/QatBridge/qdetr_round_trip.sh"
CLI="$ROOT/src/Cli/bin/Release/net10.0/onnxquant.dll"
START=$(date +%s)
mkdir -p "$OUT"
COMMON=(--batch-size "$BATCH" --train-images 256 --seed 0 --pool-cache "$OUT/train_pool.pt")
dotnet "$CLI" eval "$ROOT/models/fixtures/detr_small.onnx" --data "$ROOT/models/data/eval.npz" \
  --annotations "$ROOT/models/data/eval.json" --json > "$OUT/teacher_eval.json"
for BITS in 4-4-8 2-2-8; do
  D="$OUT/$BITS"
  mkdir -p "$D"
  dotnet "$CLI" qat-recipe --bits "$BITS" --float backbone.stem.0 --float class_heads --float box_heads \
    --model "$ROOT/models/fixtures/detr_small.onnx" -o "$D/recipe.json"
  echo "== $BITS: untrained student (initial scales, no QAT step)"
  "$RT" "$D/untrained" --recipe "$D/recipe.json" "${COMMON[@]}" --stage1-steps 0 --stage2-steps 0
  echo "== $BITS: stage 1 (backbone quantized, encoder/decoder real-valued), shared by two variants each"
  for S1KIND in plain fqm; do
    FLAGS=()
    [ $S1KIND = fqm ] && FLAGS=(--fqm)
    PYTHONPATH="$ROOT/src/QatBridge/python:$ROOT/models" OPENBLAS_NUM_THREADS=1 \
    LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      /usr/bin/python3 -m onnxquant_qat.train --teacher "$ROOT/models/fixtures/detr_small.pt" --recipe "$D/recipe.json" \
      "${COMMON[@]}" "${FLAGS[@]}" --stage1-steps "$S1" --stage1-only --out "$D/stage1-$S1KIND"
  done
  for VARIANT in baseline da fqm qdetr; do
    case $VARIANT in
      baseline) FLAGS=(); FROM=plain ;;
      da) FLAGS=(--da); FROM=plain ;;
      fqm) FLAGS=(--fqm); FROM=fqm ;;
      qdetr) FLAGS=(--da --fqm); FROM=fqm ;;
    esac
    echo "== $BITS: $VARIANT"
    "$RT" "$D/$VARIANT" --recipe "$D/recipe.json" "${COMMON[@]}" "${FLAGS[@]}" --stage2-steps "$S2" \
      --stage1-from "$D/stage1-$FROM/stage1.pt"
  done
done
/usr/bin/python3 "$ROOT/src/QatBridge/python/onnxquant_qat/ablation_table.py" "$OUT" "$S1" "$S2" "$BATCH" \
  "$(( $(date +%s) - START ))" > "$OUT/table.md"
cat "$OUT/table.md"
