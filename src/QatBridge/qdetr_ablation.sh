#!/usr/bin/env bash
# Q-DETR ablation on the small DETR and the synthetic shapes set: at 4-4-8 and 2-2-8, the quantized student before
# any training step, baseline QAT, +DA, +FQM and DA+FQM (Q-DETR), each imported with `onnxquant qat-import` and
# measured with `onnxquant eval` on models/data/eval.{npz,json}; the real-valued teacher is measured the same way.
#
#   src/QatBridge/qdetr_ablation.sh OUT_DIR [STAGE1_STEPS] [STAGE2_STEPS] [BATCH]
#
# QDETR_TEACHER / QDETR_TEACHER_ONNX choose another teacher (default models/fixtures/detr_small.{pt,onnx}).
#
# Recipes come from `onnxquant qat-recipe` (stem convolution and class/box heads float); training runs in one Python
# process (onnxquant_qat.ablation), where variants that differ only in stage 2 share one stage-1 checkpoint.
# Writes OUT_DIR/table.md and OUT_DIR/<bits>/<variant>/{train,artifact,eval.json}; the log goes to stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: qdetr_ablation.sh OUT_DIR [STAGE1_STEPS] [STAGE2_STEPS] [BATCH]}
S1=${2:-20}
S2=${3:-30}
BATCH=${4:-2}
CLI="$ROOT/src/Cli/bin/Release/net10.0/onnxquant.dll"
[ -f "$CLI" ] || dotnet build "$ROOT/src/Cli" -c Release -v q
# The teacher: its PyTorch state_dict and its ONNX export (the same weights), by default the committed fixtures.
TEACHER=${QDETR_TEACHER:-$ROOT/models/fixtures/detr_small.pt}
TEACHER_ONNX=${QDETR_TEACHER_ONNX:-$ROOT/models/fixtures/detr_small.onnx}
EVAL=(--data "$ROOT/models/data/eval.npz" --annotations "$ROOT/models/data/eval.json" --json)
START=$(date +%s)
mkdir -p "$OUT"
dotnet "$CLI" eval "$TEACHER_ONNX" "${EVAL[@]}" 2>/dev/null > "$OUT/teacher_eval.json"
for BITS in 4-4-8 2-2-8; do
  dotnet "$CLI" qat-recipe --bits "$BITS" --float backbone.stem.0 --float class_heads --float box_heads \
    --model "$(basename "$TEACHER_ONNX")" -o "$OUT/$BITS/recipe.json"
done
PYTHONPATH="$ROOT/src/QatBridge/python:$ROOT/models" OPENBLAS_NUM_THREADS=1 \
LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  /usr/bin/python3 -m onnxquant_qat.ablation --teacher "$TEACHER" --out "$OUT" --bits 4-4-8 2-2-8 \
    --stage1-steps "$S1" --stage2-steps "$S2" --batch-size "$BATCH"
for BITS in 4-4-8 2-2-8; do
  for VARIANT in untrained baseline da fqm qdetr; do
    D="$OUT/$BITS/$VARIANT"
    dotnet "$CLI" qat-import "$D/train/student.onnx" -o "$D/artifact" | tail -1
    dotnet "$CLI" eval "$D/artifact/model.onnx" "${EVAL[@]}" 2>/dev/null > "$D/eval.json"
  done
done
/usr/bin/python3 "$ROOT/src/QatBridge/python/onnxquant_qat/ablation_table.py" "$OUT" "$S1" "$S2" "$BATCH" \
  "$(( $(date +%s) - START ))" > "$OUT/table.md"
cat "$OUT/table.md"
