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


def test_export_torchvision_detector_names_its_fixed_size_features(tmp_path):
    command = [sys.executable, os.path.join(MODELS, "export_torchvision.py"), "--out", str(tmp_path), "--calib", "2", "--eval", "1",
               "ssdlite320_mobilenet_v3_large"]
    subprocess.run(command, check=True, capture_output=True)
    proto = onnx.load(str(tmp_path / "ssdlite320_mobilenet_v3_large.onnx"))
    image = proto.graph.input[0]
    assert image.name == "images"
    assert [d.dim_value for d in image.type.tensor_type.shape.dim] == [3, 320, 320]  # one image, no batch axis
    features = (tmp_path / "ssdlite320_mobilenet_v3_large.features").read_text().strip().split(",")
    # The two heads' outputs over every anchor: produced by the graph, and not its (data-dependent) detection outputs.
    produced = {o for n in proto.graph.node for o in n.output}
    assert len(features) == 2 and all(f in produced for f in features)
    assert features[0].startswith("/head/classification_head/") and features[1].startswith("/head/regression_head/")
    assert not set(features) & {o.name for o in proto.graph.output}
    calib = np.load(tmp_path / "det_calib.npz")["images"]
    assert calib.shape == (2, 3, 320, 320) and calib.dtype == np.float32
