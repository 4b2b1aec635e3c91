"""Two-stage Q-DETR training of a quantized student from a real-valued DETR teacher.

Stage 1 quantizes the backbone and keeps encoder/decoder real-valued; stage 2 starts from stage 1's checkpoint and
quantizes everything the recipe does not keep float. Loss in both stages: L = L_GT (the DETR set criterion) +
lambda * L_FQM (with --fqm). --da adds distribution alignment to the decoder co-attention queries. AdamW, lr 1e-4.

    python3 -m onnxquant_qat.train --teacher detr_small.pt --recipe recipe.json --out out/ [--da] [--fqm]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from onnxquant_models.export import DETR_OUTPUTS
from torch import nn

from .convert import ConversionReport, quantize_model
from .fqm import LAMBDA, TAU, fqm_distillation_loss
from .recipe import Recipe

BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class TrainConfig:
    stage1_steps: int = 100
    stage2_steps: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    distribution_alignment: bool = False
    query_matching: bool = False
    tau: float = TAU
    lam: float = LAMBDA
    seed: int = 0
    log_every: int = 10


@dataclass
class StepLog:
    stage: int
    step: int
    loss: float
    loss_gt: float
    loss_fqm: float
    kept_queries: int


@dataclass
class TrainResult:
    logs: List[StepLog] = field(default_factory=list)
    stage1: Optional[ConversionReport] = None
    stage2: Optional[ConversionReport] = None
    seconds: float = 0.0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def freeze_batchnorm(model: nn.Module) -> None:
    """QAT batches are small; batch statistics would drift from the teacher's, so BN layers stay in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Batches:
    """Fixed pool of (images [B,3,H,W], targets) drawn in a seeded order, so every variant sees the same data."""

    def __init__(self, images: torch.Tensor, targets: List[Dict[str, torch.Tensor]], batch_size: int, seed: int):
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.rng = random.Random(seed)
        self.order: List[int] = []

    def next(self, device: torch.device):
        if len(self.order) < self.batch_size:
            extra = list(range(len(self.targets)))
            self.rng.shuffle(extra)
            self.order += extra
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        targets = [{k: v.to(device) for k, v in self.targets[i].items()} for i in idx]
        return self.images[idx].to(device), targets


def run_stage(student: nn.Module, teacher: nn.Module, criterion: nn.Module, batches: Batches, steps: int,
              stage: int, config: TrainConfig, device: torch.device, result: TrainResult,
              log: Callable[[str], None]) -> None:
    student.train()
    freeze_batchnorm(student)
    # The first batch initializes the new activation quantizers before the optimizer sees their steps.
    images, _ = batches.next(device)
    with torch.no_grad():
        student(images)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    for step in range(1, steps + 1):
        images, targets = batches.next(device)
        out = student(images)
        loss_gt, _ = criterion(out, targets)
        loss = loss_gt
        fqm_value, kept = 0.0, 0
        if config.query_matching:
            with torch.no_grad():
                t_out = teacher(images)
            fqm = fqm_distillation_loss(out["decoder_features"], t_out["decoder_features"], out["pred_boxes"],
                                        t_out["pred_boxes"], [t["boxes"] for t in targets], config.tau)
            loss = loss + config.lam * fqm.loss
            fqm_value, kept = float(fqm.loss.detach()), fqm.kept
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 0.1)
        opt.step()
        entry = StepLog(stage, step, float(loss.detach()), float(loss_gt.detach()), fqm_value, kept)
        result.logs.append(entry)
        if step % config.log_every == 0 or step == steps:
            log(f"stage {stage} step {step}/{steps} loss {entry.loss:.4f} gt {entry.loss_gt:.4f} "
                f"fqm {entry.loss_fqm:.4f} kept {kept}")


def train_qdetr(teacher: nn.Module, make_model: Callable[[], nn.Module], criterion: nn.Module, recipe: Recipe,
                batches: Batches, config: TrainConfig, device: torch.device, workdir: str,
                log: Callable[[str], None] = print, stage1_checkpoint: Optional[str] = None,
                stage1_only: bool = False) -> tuple:
    """Runs both stages and returns (student, TrainResult). The stage-1 checkpoint is written to
    <workdir>/stage1.pt and stage 2 is built from it, as the protocol prescribes. With `stage1_checkpoint` (a
    stage1.pt of an earlier run with the same recipe, e.g. shared by variants that differ only in stage 2) stage 1
    is not trained again."""
    torch.manual_seed(config.seed)
    start = time.time()
    result = TrainResult()
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    backbone = lambda name: name.startswith(BACKBONE_PREFIX)

    student = make_model()
    student.load_state_dict(teacher.state_dict())
    result.stage1 = quantize_model(student, recipe, scope=backbone)
    if stage1_checkpoint:
        stage1_path = stage1_checkpoint
        log(f"stage 1 from {stage1_checkpoint}")
    else:
        student.to(device)
        run_stage(student, teacher, criterion, batches, config.stage1_steps, 1, config, device, result, log)
        os.makedirs(workdir, exist_ok=True)
        stage1_path = os.path.join(workdir, "stage1.pt")
        torch.save(student.state_dict(), stage1_path)
    if stage1_only:
        result.seconds = time.time() - start
        return student, result

    student = make_model()
    quantize_model(student, recipe, scope=backbone)
    try:
        student.load_state_dict(torch.load(stage1_path, map_location="cpu"))
    except RuntimeError as e:
        raise ValueError(f"{stage1_path} is not a stage-1 checkpoint of this model and recipe: {e}") from None
    result.stage2 = quantize_model(student, recipe, scope=lambda name: not backbone(name),
                                   align_query=config.distribution_alignment)
    student.to(device)
    run_stage(student, teacher, criterion, batches, config.stage2_steps, 2, config, device, result, log)
    result.seconds = time.time() - start
    return student, result


def load_pool(seed: int, count: int, image_size: int):
    """Training images from the synthetic shapes generator (train split), normalized as the models expect."""
    from onnxquant_models.dataset import ShapesConfig, detr_targets, generate_sample, normalize
    images, targets = [], []
    cfg = ShapesConfig(image_size=image_size)
    for i in range(count):
        s = generate_sample(seed, "train", i, cfg)
        images.append(torch.from_numpy(normalize(s.image)))
        t = detr_targets(s)
        targets.append({"labels": torch.from_numpy(t["labels"]), "boxes": torch.from_numpy(t["boxes"])})
    return torch.stack(images), targets


def pool(key, cache: Optional[str] = None):
    """load_pool(*key), kept in `cache` (a .pt file) between runs when given."""
    if cache and os.path.exists(cache):
        cached = torch.load(cache)
        if cached["key"] == key:
            return cached["images"], cached["targets"]
    images, targets = load_pool(*key)
    if cache:
        torch.save({"key": key, "images": images, "targets": targets}, cache + ".tmp")
        os.replace(cache + ".tmp", cache)
    return images, targets


def write_run(student: nn.Module, result: TrainResult, recipe: Recipe, config: TrainConfig, out: str,
              image_size: int, device: torch.device) -> None:
    """Writes <out>/student.pt, the QDQ export student.onnx with scales.json, and train.json (settings, layers,
    per-step losses)."""
    from .export import export_student
    os.makedirs(out, exist_ok=True)
    torch.save(student.state_dict(), os.path.join(out, "student.pt"))
    # The outputs of the reference DETR's ONNX export, so `onnxquant eval` and `compile` treat the student like the
    # float model.
    export_student(student, os.path.join(out, "student.onnx"), image_size, output_names=DETR_OUTPUTS,
                   scales_path=os.path.join(out, "scales.json"))
    summary = {
        "recipe": recipe.label, "distribution_alignment": config.distribution_alignment,
        "query_matching": config.query_matching, "tau": config.tau, "lambda": config.lam,
        "stage1_steps": config.stage1_steps, "stage2_steps": config.stage2_steps, "batch_size": config.batch_size,
        "lr": config.lr, "device": str(device), "seconds": round(result.seconds, 1),
        "quantized_layers": [asdict(c) for c in result.stage1.converted + result.stage2.converted],
        "float_layers": sorted(set(result.stage1.kept_float + result.stage2.kept_float)),
        "log": [asdict(l) for l in result.logs],
    }
    with open(os.path.join(out, "train.json"), "w") as f:
        json.dump(summary, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="state_dict of the real-valued DETR (.pt)")
    p.add_argument("--config", default="detr_small", help="DETR config name in onnxquant_models.detr")
    p.add_argument("--recipe", help="onnxquant.qat-recipe/1 JSON (from onnxquant qat-recipe or compile)")
    p.add_argument("--bits", help="uniform W-A-Attention bits instead of a recipe, e.g. 4-4-8")
    p.add_argument("--float", action="append", default=[], help="with --bits: a layer (prefix) that stays float")
    p.add_argument("--out", required=True, help="output folder: student.pt, student.onnx, scales.json, train.json")
    p.add_argument("--da", action="store_true", help="distribution alignment on the decoder co-attention queries")
    p.add_argument("--fqm", action="store_true", help="foreground-aware query matching distillation")
    p.add_argument("--stage1-steps", type=int, default=100)
    p.add_argument("--stage1-only", action="store_true", help="train stage 1, write <out>/stage1.pt and stop")
    p.add_argument("--stage1-from", help="reuse this stage1.pt (same teacher and recipe) instead of training stage 1")
    p.add_argument("--stage2-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tau", type=float, default=TAU)
    p.add_argument("--lam", type=float, default=LAMBDA)
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic train split")
    p.add_argument("--pool-cache", help="file to keep the generated training images in between runs (.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from onnxquant_models import detr as detr_module
    torch.set_num_threads(args.threads)
    if bool(args.recipe) == bool(args.bits):
        p.error("give exactly one of --recipe and --bits")
    if args.stage1_only and args.stage1_from:
        p.error("--stage1-only and --stage1-from exclude each other")
    recipe = Recipe.load(args.recipe) if args.recipe else Recipe.uniform(args.bits, args.float)
    factory = getattr(detr_module, args.config, None)
    if factory is None:
        p.error(f"unknown --config '{args.config}'")
    cfg = factory()
    make_model = lambda: detr_module.build_detr(cfg)
    teacher = make_model()
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu"))
    criterion = detr_module.SetCriterion(cfg.num_classes)
    device = pick_device(args.device)
    config = TrainConfig(args.stage1_steps, args.stage2_steps, args.batch_size, args.lr, 1e-4, args.da, args.fqm,
                         args.tau, args.lam, args.seed)
    images, targets = pool((args.data_seed, args.train_images, args.image_size), args.pool_cache)
    batches = Batches(images, targets, args.batch_size, args.seed)
    log = lambda line: print(line, flush=True)
    log(f"recipe {recipe.label} ({recipe.source}), da={args.da}, fqm={args.fqm}, device {device}")
    student, result = train_qdetr(teacher, make_model, criterion.to(device), recipe, batches, config, device,
                                  args.out, log, stage1_checkpoint=args.stage1_from,
                                  stage1_only=args.stage1_only)
    if args.stage1_only:
        log(f"stage 1 done in {result.seconds:.0f} s: {args.out}/stage1.pt")
        return 0
    unmatched = result.stage1.unmatched_recipe_layers if result.stage1 else []
    if unmatched:
        log(f"warning: {len(unmatched)} recipe layers match no module (first: {unmatched[0]})")
    write_run(student, result, recipe, config, args.out, args.image_size, device)
    log(f"done in {result.seconds:.0f} s: {args.out}/student.onnx")
    return 0


def _cli() -> int:
    from .recipe import RecipeError
    try:
        return main()
    except (RecipeError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
