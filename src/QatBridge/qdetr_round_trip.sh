#!/usr/bin/env bash
# Q-DETR round trip: recipe -> two-stage QAT in PyTorch -> QDQ export -> onnxquant qat-import (-> onnxquant eval).
#
#   src/QatBridge/qdetr_round_trip.sh OUT_DIR [--bits 4-4-8 | --recipe recipe.json] [trainer options...]
#
# Trainer options go to `python3 -m onnxquant_qat.train` unchanged (--da, --fqm, --stage1-steps N, --stage2-steps N,
# --stage1-from P, --batch-size N, --device cpu|cuda, ...). Without --recipe, `onnxquant qat-recipe` writes a uniform
# one for --bits (default 4-4-8) keeping the stem convolution and the class/box heads float. Needs the built CLI
# (dotnet build src/Cli -c Release), Debian's python3 with torch and the trained teacher models/fixtures/detr_small.pt.
# Writes OUT_DIR/recipe.json, OUT_DIR/train/{student.onnx,scales.json,train.json,stage1.pt,student.pt},
# OUT_DIR/artifact/{model.onnx,report.json,manifest.json} and, when `onnxquant eval` exists, OUT_DIR/eval.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: qdetr_round_trip.sh OUT_DIR [--bits W-A-ATT | --recipe FILE] [trainer options...]}
shift
BITS=4-4-8
RECIPE=
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bits) BITS=$2; shift 2 ;;
    --recipe) RECIPE=$2; shift 2 ;;
    *) TRAIN_ARGS+=("$1"); shift ;;
  esac
done
CLI="$ROOT/src/Cli/bin/Release/net10.0/onnxquant.dll"
[ -f "$CLI" ] || dotnet build "$ROOT/src/Cli" -c Release -v q
TEACHER=${QDETR_TEACHER:-$ROOT/models/fixtures/detr_small.pt}
[ -f "$TEACHER" ] || { echo "error: teacher $TEACHER not found (models/build_all.py detr writes it)" >&2; exit 2; }
export PYTHONPATH="$ROOT/src/QatBridge/python:$ROOT/models${PYTHONPATH:+:$PYTHONPATH}"
# Debian's torch is ~10x faster with OpenBLAS; one BLAS thread per torch thread.
export LD_LIBRARY_PATH="/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"
if [ -z "$RECIPE" ]; then
  RECIPE="$OUT/recipe.json"
  dotnet "$CLI" qat-recipe --bits "$BITS" --float backbone.stem.0 --float class_heads --float box_heads \
    --model "$ROOT/models/fixtures/detr_small.onnx" -o "$RECIPE"
fi
/usr/bin/python3 -m onnxquant_qat.train --teacher "$TEACHER" --config detr_small --recipe "$RECIPE" \
  --out "$OUT/train" "${TRAIN_ARGS[@]}"
dotnet "$CLI" qat-import "$OUT/train/student.onnx" -o "$OUT/artifact"
if dotnet "$CLI" --help | grep -qE "^  eval( |$)"; then  # the eval command comes from the evaluation work
  dotnet "$CLI" eval "$OUT/artifact/model.onnx" --data "$ROOT/models/data/eval.npz" \
    --annotations "$ROOT/models/data/eval.json" --json > "$OUT/eval.json.tmp"
  mv "$OUT/eval.json.tmp" "$OUT/eval.json"
  /usr/bin/python3 -c 'import json, sys; b = json.load(open(sys.argv[1]))["bbox"]; print("eval: AP %.1f AP50 %.1f AP75 %.1f" % (100 * b["AP"], 100 * b["AP50"], 100 * b["AP75"]))' "$OUT/eval.json"
fi
