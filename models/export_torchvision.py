"""Exports torchvision image classifiers and detectors (randomly initialized, seeded) to ONNX, with seeded random
calibration and held-out data, for checking the compiler on architectures and exporters it was not built around:
depthwise and grouped convolutions, squeeze-excitation, channel shuffles, hard-swish, LayerNorm-heavy ConvNeXt,
windowed attention; and the detectors' FPNs, GroupNorm heads, anchors, NMS and RoI heads. Speed and robustness do
not depend on the weights being trained.

    /usr/bin/python3 models/export_torchvision.py [--out DIR] [NAME ...]

Classifiers take 1x3x224x224 (calib.npz, eval.npz). Detectors (names from torchvision.models.detection) take one
3x320x320 image, as torchvision exports them (det_calib.npz, det_eval.npz), and their detection outputs change size
with the detections, so each gets NAME.features: the fixed-size tensors to measure distortion on (the heads'
outputs over all anchors for one-stage detectors, the FPN levels otherwise), comma-separated for --feature.
"""
import argparse
import os

import numpy as np
import onnx
import torch
import torchvision

DEFAULT = ["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf",
           "googlenet", "densenet121", "convnext_tiny", "swin_t", "vit_b_16"]
DETECTION_SIZE = 320


def features(path):
    """The fixed-size tensors a detector's distortion is measured on: the last Concat of each one-stage head (every
    anchor's scores and boxes), else the FPN's output convolutions."""
    nodes = onnx.load(path, load_external_data=False).graph.node
    chosen = []
    for head in ["/head/classification_head/", "/head/regression_head/"]:
        concats = [n.output[0] for n in nodes if n.op_type == "Concat" and n.name.startswith(head)]
        if concats:
            chosen.append(concats[-1])
    return chosen or [n.output[0] for n in nodes if n.op_type == "Conv" and "/fpn/layer_blocks" in n.name]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "torchvision"))
    parser.add_argument("--calib", type=int, default=32, help="calibration samples")
    parser.add_argument("--eval", type=int, default=8, help="held-out samples")
    parser.add_argument("names", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    detection = False
    for name in args.names:
        torch.manual_seed(0)
        path = os.path.join(args.out, f"{name}.onnx")
        if hasattr(torchvision.models.detection, name):
            detection = True
            model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None).eval()
            torch.onnx.export(model, ([torch.rand(3, DETECTION_SIZE, DETECTION_SIZE)],), path, opset_version=17,
                              input_names=["images"])
            with open(os.path.join(args.out, f"{name}.features"), "w") as f:
                f.write(",".join(features(path)) + "\n")
        else:
            model = getattr(torchvision.models, name)().eval()
            torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, opset_version=17,
                              input_names=["images"], output_names=["logits"])
        print(f"wrote {path}")
    rng = np.random.default_rng(0)
    np.savez(os.path.join(args.out, "calib.npz"), images=rng.random((args.calib, 3, 224, 224), dtype=np.float32))
    np.savez(os.path.join(args.out, "eval.npz"), images=rng.random((args.eval, 3, 224, 224), dtype=np.float32))
    print(f"wrote {args.out}/calib.npz ({args.calib} samples), eval.npz ({args.eval})")
    if detection:
        size = DETECTION_SIZE
        np.savez(os.path.join(args.out, "det_calib.npz"), images=rng.random((args.calib, 3, size, size), dtype=np.float32))
        np.savez(os.path.join(args.out, "det_eval.npz"), images=rng.random((args.eval, 3, size, size), dtype=np.float32))
        print(f"wrote {args.out}/det_calib.npz, det_eval.npz (3x{size}x{size})")


if __name__ == "__main__":
    main()
