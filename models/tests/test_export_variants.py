import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto

MODELS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_export_variants_writes_each_exporter_form(tmp_path):
    command = [sys.executable, os.path.join(MODELS, "export_variants.py"), "--out", str(tmp_path), "--arch", "squeezenet1_1",
               "--calib", "3", "--eval", "2"]
    subprocess.run(command, check=True, capture_output=True)

    def load(form):
        path = str(tmp_path / f"squeezenet1_1_{form}.onnx")
        proto = onnx.load(path)
        onnx.checker.check_model(path, full_check=True)  # types consistent under strict shape inference
        return proto

    old = load("opset11_initializer_inputs")
    assert old.opset_import[0].version == 11
    assert {i.name for i in old.graph.initializer} <= {i.name for i in old.graph.input}

    unfolded = load("opset13_unfolded")
    assert unfolded.opset_import[0].version == 13

    dynamic = load("opset17_dynamic_batch")
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    assert (tmp_path / "squeezenet1_1_opset17_external_data.onnx.data").exists()
    external = onnx.load(str(tmp_path / "squeezenet1_1_opset17_external_data.onnx"), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in external.graph.initializer)

    half = load("float16")
    assert all(t.data_type != TensorProto.FLOAT for t in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16

    kept = load("float16_float32_io")
    assert kept.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert kept.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert kept.graph.node[0].op_type == "Cast" and kept.graph.node[-1].op_type == "Cast"
    assert [o.name for o in kept.graph.output] == ["logits"]

    calib = np.load(tmp_path / "calib.npz")["images"]
    calib16 = np.load(tmp_path / "calib_fp16.npz")["images"]
    assert calib.shape == (3, 3, 224, 224) and calib.dtype == np.float32
    assert calib16.dtype == np.float16 and np.array_equal(calib16, calib.astype(np.float16))
