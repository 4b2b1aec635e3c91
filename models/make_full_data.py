#!/usr/bin/python3
"""Calibration and verification data at the full-size exports' input size (512x512) for `compile` and the
`compile-stages` benchmark on models/build/*.onnx. Same synthetic shapes generator and seed as models/data, larger
images; written into models/build (not committed):

    /usr/bin/python3 models/make_full_data.py [--size 512] [--calib 64] [--eval 16]

writes models/build/calib512.npz (64 samples) and models/build/eval512.npz (16 samples) with the input 'images'.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from onnxquant_models import dataset  # noqa: E402

DATA_SEED = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--eval", type=int, default=16)
    args = parser.parse_args()
    # Objects scale with the image so the scenes look like the 128x128 ones, only sharper.
    scale = args.size / dataset.ShapesConfig().image_size
    config = dataset.ShapesConfig(image_size=args.size, min_size=int(28 * scale), max_size=int(64 * scale))
    out = os.path.join(HERE, "build")
    dataset.write_split(out, f"calib{args.size}", DATA_SEED, "calib", args.calib, config)
    dataset.write_split(out, f"eval{args.size}", DATA_SEED, "eval", args.eval, config)
    print(f"wrote {out}/calib{args.size}.npz ({args.calib} samples) and {out}/eval{args.size}.npz ({args.eval} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
