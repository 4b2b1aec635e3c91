"""Exports one torchvision classifier (randomly initialized, seeded) in the forms other exporters and converters
produce, for checking that the compiler takes each: an old opset with the initializers also listed as graph inputs,
no constant folding, a training-mode export (BatchNormalization left unfolded), a symbolic batch axis, weights in an
external data file, and half precision (float16 throughout, and float16 inside a float32 interface, as converters
that keep the I/O types write it). Seeded random calibration and held-out data in float32 and float16.

    /usr/bin/python3 models/export_variants.py [--out DIR] [--arch resnet18] [--calib 24] [--eval 8]

Writes ARCH_FORM.onnx for each form below, calib.npz / eval.npz (float32) and calib_fp16.npz / eval_fp16.npz (for the
float16-interface model).
"""
import argparse
import os

import numpy as np
import onnx
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

FORMS = ["opset11_initializer_inputs", "opset13_unfolded", "opset13_training", "opset17_dynamic_batch",
         "opset17_external_data", "float16", "float16_float32_io"]


def to_float16(proto, keep_float32_io):
    """Every float tensor, value type and Constant of the graph in float16; with keep_float32_io the graph inputs and
    outputs stay float32 behind casts."""
    graph = proto.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    if not keep_float32_io:
        return proto
    initializers = {i.name for i in graph.initializer}
    casts = []
    for value in graph.input:
        if value.name in initializers or value.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        inner = value.name + "_half"
        for node in graph.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
        casts.append(helper.make_node("Cast", [value.name], [inner], name=value.name + "_to_half", to=TensorProto.FLOAT16))
    for node in reversed(casts):
        graph.node.insert(0, node)
    for value in graph.output:
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        inner = value.name + "_half"
        for node in graph.node:
            node.output[:] = [inner if n == value.name else n for n in node.output]
        graph.node.append(helper.make_node("Cast", [inner], [value.name], name=value.name + "_to_float", to=TensorProto.FLOAT))
    return proto


def export(model, path, form):
    x = torch.randn(1, 3, 224, 224)
    names = dict(input_names=["images"], output_names=["logits"])
    if form == "opset11_initializer_inputs":
        torch.onnx.export(model, x, path, opset_version=11, keep_initializers_as_inputs=True, **names)
    elif form == "opset13_unfolded":
        torch.onnx.export(model, x, path, opset_version=13, do_constant_folding=False, **names)
    elif form == "opset13_training":
        torch.onnx.export(model, x, path, opset_version=13, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, **names)
    else:
        torch.onnx.export(model, x, path, opset_version=17, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, **names)
        proto = onnx.load(path)
        if form == "opset17_external_data":
            onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=1024)
        elif form.startswith("float16"):
            onnx.save(to_float16(proto, keep_float32_io=form == "float16_float32_io"), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "variants"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--calib", type=int, default=24, help="calibration samples")
    parser.add_argument("--eval", type=int, default=8, help="held-out samples")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for form in FORMS:
        torch.manual_seed(0)
        # A fresh, seeded model per form: a training-mode export updates BatchNormalization's running statistics.
        model = getattr(torchvision.models, args.arch)().eval()
        path = os.path.join(args.out, f"{args.arch}_{form}.onnx")
        export(model, path, form)
        print(f"wrote {path}")
    rng = np.random.default_rng(0)
    calib = rng.random((args.calib, 3, 224, 224), dtype=np.float32)
    held_out = rng.random((args.eval, 3, 224, 224), dtype=np.float32)
    np.savez(os.path.join(args.out, "calib.npz"), images=calib)
    np.savez(os.path.join(args.out, "eval.npz"), images=held_out)
    np.savez(os.path.join(args.out, "calib_fp16.npz"), images=calib.astype(np.float16))
    np.savez(os.path.join(args.out, "eval_fp16.npz"), images=held_out.astype(np.float16))
    print(f"wrote {args.out}/calib.npz ({args.calib} samples), eval.npz ({args.eval}) and their float16 copies")


if __name__ == "__main__":
    main()
