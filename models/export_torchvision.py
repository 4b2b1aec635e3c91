"""Exports torchvision image classifiers (randomly initialized, seeded) to ONNX at 1x3x224x224, with seeded random
calibration and held-out data, for checking the compiler on architectures and exporters it was not built around:
depthwise and grouped convolutions, squeeze-excitation, channel shuffles, hard-swish, LayerNorm-heavy ConvNeXt,
windowed attention. Speed and robustness do not depend on the weights being trained.

    /usr/bin/python3 models/export_torchvision.py [--out DIR] [NAME ...]
"""
import argparse
import os

import numpy as np
import torch
import torchvision

DEFAULT = ["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf",
           "googlenet", "densenet121", "convnext_tiny", "swin_t", "vit_b_16"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "torchvision"))
    parser.add_argument("--calib", type=int, default=32, help="calibration samples")
    parser.add_argument("--eval", type=int, default=8, help="held-out samples")
    parser.add_argument("names", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.names:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        path = os.path.join(args.out, f"{name}.onnx")
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, opset_version=17,
                          input_names=["images"], output_names=["logits"])
        print(f"wrote {path}")
    rng = np.random.default_rng(0)
    np.savez(os.path.join(args.out, "calib.npz"), images=rng.random((args.calib, 3, 224, 224), dtype=np.float32))
    np.savez(os.path.join(args.out, "eval.npz"), images=rng.random((args.eval, 3, 224, 224), dtype=np.float32))
    print(f"wrote {args.out}/calib.npz ({args.calib} samples), eval.npz ({args.eval})")


if __name__ == "__main__":
    main()
