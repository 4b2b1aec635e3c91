#!/usr/bin/python3
"""A larger held-out evaluation set for box/mask AP figures on the bundled models (not committed):

    /usr/bin/python3 models/make_eval_set.py [--count 1000] [--out models/build]

writes models/build/eval<count>.npz (input 'images' and 'image_ids') and models/build/eval<count>.json (COCO
ground truth). Its images are samples 0..count-1 of the generator's eval split at the bundled size, so its first 100
are models/data/eval.npz; no training, calibration or validation set draws from that split. With 100 images one AP
point is within the spread of the set; 1,000 narrow it about threefold.
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
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(HERE, "build"))
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    out = args.out
    dataset.write_split(out, f"eval{args.count}", DATA_SEED, "eval", args.count)
    print(f"wrote {out}/eval{args.count}.npz and {out}/eval{args.count}.json ({args.count} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
