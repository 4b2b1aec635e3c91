"""The Q-DETR ablation's training half, in one process (the teacher, data and interpreter are loaded once):

    python3 -m onnxquant_qat.ablation --teacher detr_small.pt --out OUT --bits 4-4-8 2-2-8 --seeds 0 1 2 \\
        [--long] [--stage1-steps N] [--stage2-steps N] [--batch-size N] [--eval-every N]

For every W-A-Attention setting it reads OUT/<bits>/recipe.json (written by `onnxquant qat-recipe`) and writes
OUT/<bits>/untrained/train (the post-training start, which every variant starts from) and, per seed,
OUT/<bits>/seed<S>/<variant>/train/{student.onnx,scales.json,train.json} for baseline, da, fqm and qdetr. Stage 1 is
trained twice per setting and seed (without and with FQM) and shared by the two variants that use it. The default
schedule is the CPU one (52 to 78 min for 3 seeds and both settings on the shared 2-core machine); --long is the one for a
GPU.
src/QatBridge/qdetr_ablation.sh runs this, then imports and evaluates each student.
"""
import argparse
import json
import os
import sys
import time

import torch

from .recipe import Recipe
from .train import (DataSplit, TrainConfig, pick_device, pool, start_run, train_qdetr, validation_detections,
                    write_run)

VARIANTS = (("baseline", False, False), ("da", True, False), ("fqm", False, True), ("qdetr", True, True))

# (stage-1 steps, stage-2 steps, batch, eval every, training pool, validation images)
SCHEDULES = {"cpu": (100, 900, 4, 100, 768, 256), "long": (2000, 6000, 8, 250, 4096, 512)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bits", nargs="+", default=["4-4-8", "2-2-8"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--long", action="store_true", help="the long schedule (for a GPU): " + str(SCHEDULES["long"]))
    p.add_argument("--stage1-steps", type=int)
    p.add_argument("--stage2-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--train-images", type=int)
    p.add_argument("--val-images", type=int)
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="weights")
    p.add_argument("--lr-quant", type=float, default=TrainConfig.lr_quant, help="LSQ steps and DA gamma/beta")
    p.add_argument("--select-confidence", type=float, default=TrainConfig.select_confidence,
                   help="a checkpoint replaces the start only if it beats it on this fraction of bootstrap resamples")
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS], help="a subset of " +
                   " ".join(v[0] for v in VARIANTS))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    s1, s2, batch, every, pool_size, val = SCHEDULES["long" if args.long else "cpu"]
    s1 = args.stage1_steps if args.stage1_steps is not None else s1
    s2 = args.stage2_steps if args.stage2_steps is not None else s2
    batch = args.batch_size or batch
    every = args.eval_every or every
    pool_size = args.train_images or pool_size
    val = args.val_images or val
    from onnxquant_models import detr as detr_module
    torch.set_num_threads(args.threads)
    cfg = detr_module.detr_small()
    make_model = lambda: detr_module.build_detr(cfg)
    teacher = make_model()
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu"))
    criterion = detr_module.SetCriterion(cfg.num_classes)
    device = pick_device(args.device)
    images, targets = pool((0, pool_size, 128), os.path.join(args.out, "train_pool.pt"))
    split = DataSplit.of(images, targets, val)
    log = lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    log(f"schedule: stage 1 {s1}, stage 2 {s2} steps, batch {batch}, validation every {every} steps on {val} of "
        f"{pool_size} pool images, seeds {args.seeds}, device {device}")
    # The real-valued teacher on the same validation split: distillation can only pull a student towards it.
    teacher_val = validation_detections(teacher.to(device).eval(), split.val_images, split.val_targets, device)
    teacher_scores = {"ap": teacher_val.ap(), "ap50": teacher_val.ap50(), "images": len(teacher_val)}
    log(f"real-valued teacher: validation AP {teacher_scores['ap']:.4f} AP50 {teacher_scores['ap50']:.4f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "teacher_validation.json"), "w") as f:
        json.dump(teacher_scores, f)
    for bits in args.bits:
        recipe = Recipe.load(os.path.join(args.out, bits, "recipe.json"))
        untrained = TrainConfig(stage1_steps=0, stage2_steps=0, batch_size=batch)
        student, result = start_run(teacher, make_model, recipe, split, untrained, device)
        write_run(student, result, recipe, untrained, os.path.join(args.out, bits, "untrained", "train"), 128, device)
        log(f"{bits} post-training start: validation AP {result.start_ap:.4f} AP50 {result.start_ap50:.4f}")
        for seed in args.seeds:
            base = TrainConfig(stage1_steps=s1, stage2_steps=s2, batch_size=batch, eval_every=every, seed=seed,
                               log_every=max(every, 10), lr=args.lr, lr_quant=args.lr_quant,
                               select_confidence=args.select_confidence)
            folder = os.path.join(args.out, bits, f"seed{seed}")

            def run(name, config, **kw):
                log(f"{bits} seed {seed} {name}")
                # The same seeded batch order for every variant of a seed: differences come from the method.
                return train_qdetr(teacher, make_model, criterion, recipe, split, config, device,
                                   os.path.join(folder, name), log, **kw)

            variants = [v for v in VARIANTS if v[0] in args.variants]
            stage1 = {}
            for fqm in sorted({v[2] for v in variants}):
                name = "stage1-fqm" if fqm else "stage1-plain"
                run(name, TrainConfig(**{**base.__dict__, "query_matching": fqm}), stage1_only=True)
                stage1[fqm] = os.path.join(folder, name, "stage1.pt")
            for name, da, fqm in variants:
                config = TrainConfig(**{**base.__dict__, "distribution_alignment": da, "query_matching": fqm})
                student, result = run(name, config, stage1_checkpoint=stage1[fqm])
                write_run(student, result, recipe, config, os.path.join(folder, name, "train"), 128, device)
                log(f"{bits} seed {seed} {name}: {result.seconds:.0f} s, validation AP start "
                    f"{result.start_ap:.4f} kept {result.kept.ap:.4f} (AP50 {result.start_ap50:.4f} -> "
                    f"{result.kept.ap50:.4f}; stage {result.kept.stage} step {result.kept.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
