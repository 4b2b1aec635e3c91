import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper

MODELS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ops(proto):
    return {n.op_type for n in proto.graph.node}


def test_export_forms_writes_each_layer_form(tmp_path):
    command = [sys.executable, os.path.join(MODELS, "export_forms.py"), "--out", str(tmp_path), "--calib", "3", "--eval", "2"]
    subprocess.run(command, check=True, capture_output=True)

    def load(name, opset):
        path = str(tmp_path / f"{name}.onnx")
        onnx.checker.check_model(path, full_check=True)
        proto = onnx.load(path)
        assert proto.opset_import[0].version == opset
        return proto

    yolo = load("yolo_op12", 12)
    assert {"Conv", "Sigmoid", "Mul", "Concat", "MaxPool", "Resize"} <= ops(yolo)
    assert "BatchNormalization" not in ops(yolo)  # folded by the exporter in inference mode
    groups = sorted({a.i for n in yolo.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"})
    assert groups == [1, 4, 64]  # plain, grouped and depthwise convolutions
    dynamic = load("yolo_op17_dynamic", 17)
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    v8 = load("yolov8_op17", 17)
    assert {"Split", "Softmax", "Sigmoid", "Concat"} <= ops(v8)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in v8.graph.initializer}
    dfl = [weights[n.input[1]] for n in v8.graph.node if n.op_type == "Conv" and weights[n.input[1]].shape == (1, 16, 1, 1)]
    assert len(dfl) == 1 and np.array_equal(dfl[0].ravel(), np.arange(16, dtype=np.float32))

    library = load("hfvit_op11", 11)
    assert {"ReduceMean", "Pow", "Sqrt", "Erf", "Softmax", "MatMul"} <= ops(library)
    assert "LayerNormalization" not in ops(library)
    assert "Einsum" in ops(load("hfvit_einsum_op13_dynamic", 13))

    audio = load("audio_conv1d_gru_op13", 13)
    assert {"GRU", "ConvTranspose"} <= ops(audio)
    weights = {i.name: i for i in audio.graph.initializer}
    conv_ranks = [len(weights[n.input[1]].dims) for n in audio.graph.node if n.op_type == "Conv"]
    assert conv_ranks == [3, 3]

    for name, opset in (("mhadetr_op13", 13), ("mhadetr_op17_dynamic", 17)):
        assert {"MatMul", "Softmax"} <= ops(load(name, opset))

    library_detr = load("libdetr_op17_dynamic", 17)
    assert {"Tile", "ConstantOfShape", "MatMul", "Softmax"} <= ops(library_detr)
    assert library_detr.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    two_stage = load("twostage_detr_op16", 16)
    assert {"TopK", "GatherElements", "GridSample", "Softmax"} <= ops(two_stage)
    topk = [n for n in two_stage.graph.node if n.op_type == "TopK"]
    assert len(topk) == 1 and any(topk[0].output[1] in n.input for n in two_stage.graph.node)

    left = load("weightleft_op13", 13)
    weights = {i.name for i in left.graph.initializer}
    assert any(n.op_type == "MatMul" and n.input[0] in weights for n in left.graph.node)

    unfolded = load("unfolded_op13", 13)
    # What a folding exporter would store is computed in the graph: the frozen normalization's scale (Sqrt of the
    # variance), the weight-normalized weight (ReduceL2), the normalizations after Conv, ConvTranspose and Linear.
    assert {"Sqrt", "ReduceL2", "BatchNormalization", "ConvTranspose", "Einsum", "Gemm"} <= ops(unfolded)
    weights = {i.name for i in unfolded.graph.initializer}
    computed = [n for n in unfolded.graph.node if n.op_type == "Conv" and n.input[1] not in weights]
    assert len(computed) == 1  # the weight-normalized convolution
    norm_inputs = {n.input[0] for n in unfolded.graph.node if n.op_type == "BatchNormalization"}
    producers = {o: n.op_type for n in unfolded.graph.node for o in n.output}
    assert sorted(producers[i] for i in norm_inputs) == ["Conv", "ConvTranspose", "Gemm"]

    tf = load("tfstyle_nhwc_op13", 13)
    assert [d.dim_param or d.dim_value for d in tf.graph.input[0].type.tensor_type.shape.dim] == ["N", 128, 128, 3]
    assert {"Pad", "Clip", "Transpose", "Gemm"} <= ops(tf)
    assert any(a.name == "auto_pad" and a.s == b"SAME_UPPER" for n in tf.graph.node for a in n.attribute)
    assert any(a.name == "transA" and a.i == 1 for n in tf.graph.node if n.op_type == "Gemm" for a in n.attribute)
    assert np.load(tmp_path / "calib_nhwc.npz")["input"].shape == (3, 128, 128, 3)

    calib = np.load(tmp_path / "calib128.npz")["images"]
    assert calib.shape == (3, 3, 128, 128) and calib.dtype == np.float32
    assert np.load(tmp_path / "eval64.npz")["images"].shape == (2, 3, 64, 64)
