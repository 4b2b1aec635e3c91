"""Export of a trained student to ONNX as a QDQ model, plus the learned scales as a sidecar JSON.

Weights become integer initializers (int8 container, values in the layer's b-bit range) followed by a per-channel
DequantizeLinear; activations become Clip -> QuantizeLinear -> DequantizeLinear with the learned step (zero point 0).
The sidecar `onnxquant.qat-scales/1` lists every quantized layer with its bits and learned steps; `onnxquant
qat-import` reads both.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Dict, List, Sequence

import onnx
import torch
from onnxquant_models.export import DETR_OUTPUTS, INPUT_NAME, OPSET, DetrExport
from torch import nn

from .convert import quantized_modules
from .lsq import LsqQuantizer
from .modules import QuantMultiheadAttention, QuantSplitAttention

SCALES_SCHEMA = "onnxquant.qat-scales/1"
# The detections only (pred_logits, pred_boxes); train.py exports all of DETR_OUTPUTS, like the float model.
OUTPUT_NAMES = DETR_OUTPUTS[:2]


def learned_scales(model: nn.Module) -> Dict[str, object]:
    layers: List[Dict[str, object]] = []
    for name, module in quantized_modules(model):
        if isinstance(module, QuantSplitAttention):
            if module.attention_bits == 0:
                continue  # q, k, v and the softmax output stay float
            entry = {"name": name, "kind": "attention", "attention_bits": module.attention_bits,
                     "aligned": module.align is not None}
            for part in ("q_quant", "k_quant", "v_quant", "softmax_quant"):
                entry[part] = float(getattr(module, part).scale.detach().abs())
            layers.append(entry)
            continue
        if isinstance(module, QuantMultiheadAttention):
            continue
        aq = module.aq
        float_input = not isinstance(aq, LsqQuantizer)
        layers.append({
            "name": name,
            "kind": "conv" if module.weight.dim() == 4 else "linear",
            "weight_bits": module.weight_bits,
            "act_bits": module.act_bits,
            "act_signed": False if float_input else bool(aq.signed),
            "act_scale": 0.0 if float_input else float(aq.scale.detach().abs()),
            "weight_scales": [float(s) for s in module.wq.scale.detach().abs().flatten()],
        })
    layers.sort(key=lambda e: e["name"])
    return {"schema": SCALES_SCHEMA, "layers": layers}


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Turns Constant nodes holding a tensor into initializers, so integer weights sit where weight readers look for
    them (initializer -> DequantizeLinear). Returns how many were moved."""
    keep, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


def export_student(model: nn.Module, path: str, image_size: int, output_names: Sequence[str] = OUTPUT_NAMES,
                   input_name: str = INPUT_NAME, opset: int = OPSET, scales_path: str | None = None) -> None:
    """Writes the QDQ ONNX model (atomically) and, if asked, the learned-scales sidecar. Every quantizer must have
    been initialized (run at least one batch through the student first)."""
    model = model.eval()
    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, LsqQuantizer)]
    missing = [n for n, m in quantizers if not bool(m.initialized) and not n.endswith(".wq") and n.split(".")[-1] != "in_wq"]
    if missing:
        raise RuntimeError(f"{len(missing)} activation quantizers never saw data (first: {missing[0]}); run a "
                           "forward pass before exporting")
    device = next(model.parameters()).device
    model = model.cpu()
    for _, module in quantized_modules(model):
        if hasattr(module, "prepare_export") and not isinstance(module, QuantSplitAttention):
            module.prepare_export()
    for _, q in quantizers:
        q.export_mode = True
    try:
        wrapper = DetrExport(model, output_names)
        dummy = torch.zeros(1, 3, image_size, image_size)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".student-", suffix=".onnx")
        os.close(fd)
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing warns about every Python float taken from a learned step; those are meant to be constants.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(wrapper, dummy, tmp, opset_version=opset, input_names=[input_name],
                              output_names=list(output_names), do_constant_folding=True)
        model_proto = onnx.load(tmp)
        constants_to_initializers(model_proto.graph)
        onnx.checker.check_model(model_proto)
        onnx.save(model_proto, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates it private; the artifact is meant to be shared
        os.replace(tmp, path)
    finally:
        for _, q in quantizers:
            q.export_mode = False
        model.to(device)
    if scales_path:
        text = json.dumps(learned_scales(model), indent=1) + "\n"
        with open(scales_path + ".tmp", "w") as f:
            f.write(text)
        os.replace(scales_path + ".tmp", scales_path)
