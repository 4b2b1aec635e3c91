"""Writes a small quantized DETR student for the C# tests of `onnxquant qat-import`:

    python3 -m onnxquant_qat.fixture OUT_DIR

OUT_DIR/float.onnx (the model before quantization), OUT_DIR/student.onnx (QDQ, 4-4-8 with distribution alignment, 64x64 input), scales.json, and the PyTorch reference
for one fixed input: input.bin ([1,3,64,64] float32 little-endian), pred_logits.bin, pred_boxes.bin.
"""
import os
import sys

import numpy as np
import torch
from onnxquant_models.export import INPUT_NAME, OPSET, DetrExport

from .convert import quantize_model
from .export import OUTPUT_NAMES, export_student
from .recipe import LayerRecipe, Recipe

SIZE = 64


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[0]
    os.makedirs(out, exist_ok=True)
    from onnxquant_models.detr import build_detr, detr_tiny
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_detr(detr_tiny())
    model.eval()
    with torch.no_grad():  # the float model, for the test that refuses a non-quantized "student"
        torch.onnx.export(DetrExport(model, OUTPUT_NAMES), torch.zeros(1, 3, SIZE, SIZE),
                          os.path.join(out, "float.onnx"), opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    calib = torch.randn(4, 3, SIZE, SIZE, generator=g)
    # Statistics of the float model's co-attention query inputs, so the exported DA is not the identity and the
    # runtime check covers its normalize -> QuantizeLinear -> DequantizeLinear -> scale-back chain.
    queries = {}
    hooks = [layer.cross_attn.register_forward_pre_hook(lambda m, args, i=i: queries.__setitem__(i, args[0]))
             for i, layer in enumerate(model.decoder)]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    quantize_model(model, Recipe(4, 4, 8, layers=(LayerRecipe("input_proj", 2, 8),), float_layers=("class_heads",)),
                   align_query=True)
    model.eval()
    for i, layer in enumerate(model.decoder):
        flat = queries[i].reshape(-1, queries[i].shape[-1])
        layer.cross_attn.align_from(flat.mean(0), flat.var(0, unbiased=False))
    with torch.no_grad():
        model(calib)  # initializes the activation steps
        ref = model(x)
    export_student(model, os.path.join(out, "student.onnx"), SIZE, scales_path=os.path.join(out, "scales.json"))
    x.numpy().astype("<f4").tofile(os.path.join(out, "input.bin"))
    for name in OUTPUT_NAMES:
        ref[name].numpy().astype("<f4").tofile(os.path.join(out, f"{name}.bin"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
