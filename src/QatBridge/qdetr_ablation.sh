#!/usr/bin/env bash
# Q-DETR ablation on the small DETR and the synthetic shapes set: at each W-A-Attention setting, the post-training
# start (no QAT step), baseline QAT, +DA, +FQM and DA+FQM (Q-DETR) for every seed, each imported with
# `onnxquant qat-import` and measured with `onnxquant eval` on models/data/eval.{npz,json}; the real-valued teacher is
# measured the same way.
#
#   src/QatBridge/qdetr_ablation.sh OUT_DIR [options of onnxquant_qat.ablation...]
#
# e.g. `--seeds 0 1 2 --bits 4-4-8 2-2-8` (the defaults), `--long` (the GPU schedule), `--stage2-steps N`.
# QDETR_TEACHER / QDETR_TEACHER_ONNX choose another teacher (default models/fixtures/detr_small.{pt,onnx}).
#
# Recipes come from `onnxquant qat-recipe` (stem convolution and class/box heads float); training runs in one Python
# process (onnxquant_qat.ablation) with one torch thread, under `nice -n 19`.
# Writes OUT_DIR/table.md and OUT_DIR/<bits>/{untrained,seed<S>/<variant>}/{train,artifact,eval.json}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: qdetr_ablation.sh OUT_DIR [ablation options...]}
shift
ARGS=("$@")
# The settings and seeds the Python half trains, so the import/eval loop below visits the same folders.
BITS_LIST=(4-4-8 2-2-8)
SEEDS=(0 1 2)
i=0
while [ $i -lt ${#ARGS[@]} ]; do
  case "${ARGS[$i]}" in
    --bits|--seeds)
      key=${ARGS[$i]}; values=(); i=$((i + 1))
      while [ $i -lt ${#ARGS[@]} ] && [[ "${ARGS[$i]}" != --* ]]; do values+=("${ARGS[$i]}"); i=$((i + 1)); done
      if [ "$key" = --bits ]; then BITS_LIST=("${values[@]}"); else SEEDS=("${values[@]}"); fi ;;
    *) i=$((i + 1)) ;;
  esac
done
CLI="$ROOT/src/Cli/bin/Release/net10.0/onnxquant.dll"
[ -f "$CLI" ] || dotnet build "$ROOT/src/Cli" -c Release -v q
TEACHER=${QDETR_TEACHER:-$ROOT/models/fixtures/detr_small.pt}
TEACHER_ONNX=${QDETR_TEACHER_ONNX:-$ROOT/models/fixtures/detr_small.onnx}
EVAL=(--data "$ROOT/models/data/eval.npz" --annotations "$ROOT/models/data/eval.json" --json --threads 1)
START=$(date +%s)
mkdir -p "$OUT"
dotnet "$CLI" eval "$TEACHER_ONNX" "${EVAL[@]}" 2>/dev/null > "$OUT/teacher_eval.json"
for BITS in "${BITS_LIST[@]}"; do
  mkdir -p "$OUT/$BITS"
  dotnet "$CLI" qat-recipe --bits "$BITS" --float backbone.stem.0 --float class_heads --float box_heads \
    --model "$(basename "$TEACHER_ONNX")" -o "$OUT/$BITS/recipe.json"
done
PYTHONPATH="$ROOT/src/QatBridge/python:$ROOT/models" OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  nice -n 19 /usr/bin/python3 -m onnxquant_qat.ablation --teacher "$TEACHER" --out "$OUT" --threads 1 "${ARGS[@]}"
evaluate() {
  dotnet "$CLI" qat-import "$1/train/student.onnx" -o "$1/artifact" | tail -1
  nice -n 19 dotnet "$CLI" eval "$1/artifact/model.onnx" "${EVAL[@]}" 2>/dev/null > "$1/eval.json"
}
for BITS in "${BITS_LIST[@]}"; do
  evaluate "$OUT/$BITS/untrained"
  for SEED in "${SEEDS[@]}"; do
    for VARIANT in baseline da fqm qdetr; do
      evaluate "$OUT/$BITS/seed$SEED/$VARIANT"
    done
  done
done
/usr/bin/python3 "$ROOT/src/QatBridge/python/onnxquant_qat/ablation_table.py" "$OUT" "$(( $(date +%s) - START ))" \
  > "$OUT/table.md"
cat "$OUT/table.md"
