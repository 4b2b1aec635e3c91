#!/usr/bin/python3
"""Regenerates every committed file under models/ (data, trained weights, ONNX fixtures) and the full-size exports
under models/build/ (not committed).

    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OPENBLAS_NUM_THREADS=1 \
        /usr/bin/python3 models/build_all.py [--steps data,detr,maskrcnn,export,full]

Steps (default: all, in this order):
  data      models/data/{calib,eval}.{npz,json}
  detr      trains the small DETR -> models/fixtures/detr_small.pt
  maskrcnn  trains the small Swin-T Mask-RCNN -> models/build/maskrcnn_swin_small.pt
  export    (= export-detr,export-maskrcnn) models/fixtures/{detr_small,maskrcnn_swin_small}.onnx from the trained
            weights, each with <name>.reference.npz (the first eval image and PyTorch's outputs under the graph's output names, for
            numerical checks of the graph in a runtime), plus a sanity metric of both on the eval split
            (models/build/sanity.json)
  full      full-size DETR-R50, Mask-RCNN Swin-T and ViT-B/16 (and the small ViT) exports, untrained, into models/build
Training is single-threaded and seeded, so a rerun on the same machine reproduces the same weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

# onnxquant_models is the installed package (`dotnet cake --target=setup-python`); run as a script, Python also puts
# this folder first on the path, so it works before the install too.
from onnxquant_models import dataset

HERE = os.path.dirname(os.path.abspath(__file__))

DATA_DIR = os.path.join(HERE, "data")
FIXTURES = os.path.join(HERE, "fixtures")
BUILD = os.path.join(HERE, "build")
DATA_SEED = 0
POOL_SIZE = 4000
CALIB_COUNT = 64
EVAL_COUNT = 100
STEPS = ("data", "detr", "maskrcnn", "export-detr", "export-maskrcnn", "full")
ALIASES = {"export": ("export-detr", "export-maskrcnn")}


def log_to(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a", encoding="utf-8")

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        f.write(line + "\n")
        f.flush()

    return log


def step_data(log) -> None:
    dataset.write_split(DATA_DIR, "calib", DATA_SEED, "calib", CALIB_COUNT)
    dataset.write_split(DATA_DIR, "eval", DATA_SEED, "eval", EVAL_COUNT)
    log(f"data: {CALIB_COUNT} calibration and {EVAL_COUNT} eval images in {DATA_DIR}")


def pool():
    return dataset.load_or_build_pool(os.path.join(BUILD, "train_pool.npz"), DATA_SEED, POOL_SIZE)


def step_detr(log) -> None:
    from onnxquant_models.train_detr import DETR_PHASES, train_detr
    train_pool = pool()
    model = None
    for k, recipe in enumerate(DETR_PHASES):
        start = time.time()
        model = train_detr(train_pool, recipe, log=log, model=model)
        log(f"detr: phase {k + 1} {recipe} in {time.time() - start:.0f} s wall")
    _save_state(model, os.path.join(FIXTURES, "detr_small.pt"))


def step_maskrcnn(log) -> None:
    from onnxquant_models.train_maskrcnn import MASKRCNN_PHASES, train_maskrcnn
    train_pool = pool()
    model = None
    for k, recipe in enumerate(MASKRCNN_PHASES):
        start = time.time()
        model = train_maskrcnn(train_pool, recipe, log=log, model=model)
        log(f"maskrcnn: phase {k + 1} {recipe} in {time.time() - start:.0f} s wall")
    _save_state(model, os.path.join(BUILD, "maskrcnn_swin_small.pt"))


def _save_state(model: torch.nn.Module, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _eval_split():
    with np.load(os.path.join(DATA_DIR, "eval.npz")) as f:
        images = f["images"]
    with open(os.path.join(DATA_DIR, "eval.json"), encoding="utf-8") as f:
        annotations = json.load(f)
    return images, annotations


def _record_sanity(name: str, metrics) -> None:
    path = os.path.join(BUILD, "sanity.json")
    record = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    record[name] = vars(metrics)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)


def step_export_detr(log) -> None:
    from onnxquant_models import export
    from onnxquant_models.detr import DETR, detr_small
    from onnxquant_models.sanity import detr_sanity

    images, annotations = _eval_split()
    example = torch.from_numpy(images[:1])
    detr = DETR(detr_small())
    detr.load_state_dict(torch.load(os.path.join(FIXTURES, "detr_small.pt")))
    detr.eval()
    export.export_detr(detr, example, os.path.join(FIXTURES, "detr_small.onnx"))
    export.write_reference(export.reference_outputs(detr, example), export.DETR_OUTPUTS, example,
                           os.path.join(FIXTURES, "detr_small.reference.npz"))
    metrics = detr_sanity(detr, images, annotations)
    _record_sanity("detr_small", metrics)
    log(f"detr_small on eval: {metrics}")


def step_export_maskrcnn(log) -> None:
    from onnxquant_models import export
    from onnxquant_models.maskrcnn import build_maskrcnn, maskrcnn_swin_small
    from onnxquant_models.sanity import maskrcnn_sanity

    images, annotations = _eval_split()
    example = torch.from_numpy(images[:1])
    mask = build_maskrcnn(maskrcnn_swin_small())
    mask.load_state_dict(torch.load(os.path.join(BUILD, "maskrcnn_swin_small.pt")))
    mask.eval()
    export.export_maskrcnn(mask, example, os.path.join(FIXTURES, "maskrcnn_swin_small.onnx"))
    export.write_reference(export.reference_outputs(mask, example), export.MASKRCNN_OUTPUTS, example,
                           os.path.join(FIXTURES, "maskrcnn_swin_small.reference.npz"))
    metrics = maskrcnn_sanity(mask, images, annotations)
    _record_sanity("maskrcnn_swin_small", metrics)
    log(f"maskrcnn_swin_small on eval: {metrics}")


def step_full(log) -> None:
    from onnxquant_models import export
    from onnxquant_models.detr import DETR, detr_r50
    from onnxquant_models.maskrcnn import (build_maskrcnn, maskrcnn_swin_t, maskrcnn_vit_b16, maskrcnn_vit_small,
                                           prepare_untrained)

    torch.manual_seed(0)
    size = 512
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32))
    detr = DETR(detr_r50())
    prepare_untrained(detr, example)
    export.export_detr(detr, example, os.path.join(BUILD, "detr_r50.onnx"))
    log("full: detr_r50.onnx")
    for name, config in (("maskrcnn_swin_t", maskrcnn_swin_t()), ("maskrcnn_vit_b16", maskrcnn_vit_b16()),
                         ("maskrcnn_vit_small", maskrcnn_vit_small())):
        ex = example if config.image_size == size else example[..., :config.image_size, :config.image_size]
        model = build_maskrcnn(config)
        prepare_untrained(model, ex)
        export.export_maskrcnn(model, ex, os.path.join(BUILD, f"{name}.onnx"))
        log(f"full: {name}.onnx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)} ('export' means both exports)")
    args = parser.parse_args()
    steps = [name for s in args.steps.split(",") if s.strip() for name in ALIASES.get(s.strip(), (s.strip(),))]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; expected a subset of {list(STEPS)}")
    # One thread keeps training bit-reproducible and leaves the other core to the rest of the machine.
    torch.set_num_threads(1)
    log = log_to(os.path.join(BUILD, "build_all.log"))
    functions = {"data": step_data, "detr": step_detr, "maskrcnn": step_maskrcnn, "export-detr": step_export_detr,
                 "export-maskrcnn": step_export_maskrcnn, "full": step_full}
    for step in STEPS:
        if step in steps:
            start = time.time()
            functions[step](log)
            log(f"step {step}: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
