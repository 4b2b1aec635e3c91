import os
import subprocess
import sys

import numpy as np
import onnx

MODELS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_export_torchvision_writes_a_valid_model_and_seeded_data(tmp_path):
    command = [sys.executable, os.path.join(MODELS, "export_torchvision.py"), "--out", str(tmp_path), "--calib", "3", "--eval", "2",
               "squeezenet1_1"]
    subprocess.run(command, check=True, capture_output=True)
    proto = onnx.load(str(tmp_path / "squeezenet1_1.onnx"))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.opset_import[0].version == 17
    calib = np.load(tmp_path / "calib.npz")["images"]
    held_out = np.load(tmp_path / "eval.npz")["images"]
    assert calib.shape == (3, 3, 224, 224) and held_out.shape == (2, 3, 224, 224)
    assert calib.dtype == np.float32 and 0 <= calib.min() and calib.max() < 1
    # Seeded: a second export gives the same weights and data.
    first = [np.frombuffer(t.raw_data, np.uint8).copy() for t in proto.graph.initializer]
    subprocess.run(command, check=True, capture_output=True)
    again = onnx.load(str(tmp_path / "squeezenet1_1.onnx"))
    assert all(np.array_equal(a, np.frombuffer(t.raw_data, np.uint8)) for a, t in zip(first, again.graph.initializer))
    assert np.array_equal(calib, np.load(tmp_path / "calib.npz")["images"])
