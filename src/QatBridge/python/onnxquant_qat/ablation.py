"""The Q-DETR ablation's training half, in one process (the teacher, data and interpreter are loaded once):

    python3 -m onnxquant_qat.ablation --teacher detr_small.pt --out OUT --bits 4-4-8 2-2-8 \\
        [--stage1-steps N] [--stage2-steps N] [--batch-size N]

For every W-A-Attention setting it reads OUT/<bits>/recipe.json (written by `onnxquant qat-recipe`) and writes
OUT/<bits>/<variant>/train/{student.onnx,scales.json,train.json} for the variants untrained (initial scales, no
step), baseline, da, fqm and qdetr. Stage 1 is trained twice per setting (without and with FQM) and shared by the
two variants that use it. src/QatBridge/qdetr_ablation.sh runs this, then imports and evaluates each student.
"""
import argparse
import os
import sys
import time

import torch

from .recipe import Recipe
from .train import Batches, TrainConfig, pick_device, pool, train_qdetr, write_run

VARIANTS = (("baseline", False, False), ("da", True, False), ("fqm", False, True), ("qdetr", True, True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bits", nargs="+", default=["4-4-8", "2-2-8"])
    p.add_argument("--stage1-steps", type=int, default=20)
    p.add_argument("--stage2-steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from onnxquant_models import detr as detr_module
    torch.set_num_threads(args.threads)
    cfg = detr_module.detr_small()
    make_model = lambda: detr_module.build_detr(cfg)
    teacher = make_model()
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu"))
    criterion = detr_module.SetCriterion(cfg.num_classes)
    device = pick_device(args.device)
    images, targets = pool((0, args.train_images, 128), os.path.join(args.out, "train_pool.pt"))
    log = lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    for bits in args.bits:
        recipe = Recipe.load(os.path.join(args.out, bits, "recipe.json"))
        base = TrainConfig(stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                           batch_size=args.batch_size, log_every=10)

        def run(name, config, **kw):
            log(f"{bits} {name}")
            # The same seeded batch order for every variant: differences come from the method, not the data.
            batches = Batches(images, targets, args.batch_size, config.seed)
            return train_qdetr(teacher, make_model, criterion, recipe, batches, config, device,
                               os.path.join(args.out, bits, name), log, **kw)

        untrained = TrainConfig(stage1_steps=0, stage2_steps=0, batch_size=args.batch_size)
        student, result = run("untrained", untrained)
        write_run(student, result, recipe, untrained, os.path.join(args.out, bits, "untrained", "train"), 128, device)
        stage1 = {}
        for fqm in (False, True):
            name = "stage1-fqm" if fqm else "stage1-plain"
            run(name, TrainConfig(**{**base.__dict__, "query_matching": fqm}), stage1_only=True)
            stage1[fqm] = os.path.join(args.out, bits, name, "stage1.pt")
        for name, da, fqm in VARIANTS:
            config = TrainConfig(**{**base.__dict__, "distribution_alignment": da, "query_matching": fqm})
            student, result = run(name, config, stage1_checkpoint=stage1[fqm])
            write_run(student, result, recipe, config, os.path.join(args.out, bits, name, "train"), 128, device)
            log(f"{bits} {name}: {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
