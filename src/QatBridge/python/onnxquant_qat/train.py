"""Two-stage Q-DETR training of a quantized student from a real-valued DETR teacher, set up so that it cannot end
below its start.

The start is the post-training student: batch norm folded into its convolutions, every layer quantized, steps from
the recipe (a compiler recipe carries the artifact's exact grid, so this student computes what the compiled model
does) or, where the recipe has none, from the quantization MSE on a fixed calibration batch. Stage 1 quantizes the
backbone and keeps encoder/decoder real-valued; stage 2 starts from stage 1's checkpoint and quantizes everything
the recipe does not keep float. Loss: L = L_GT (the DETR set criterion) + lambda * L_FQM (with --fqm, over every
decoder layer). --da adds distribution alignment, initialized from the teacher's query statistics, to the decoder
co-attention queries: the query input is normalized per channel in front of its activation quantizer and scaled back
(gamma, beta) behind it.

Optimization: AdamW with separate learning rates for weights (--lr) and quantizer parameters (LSQ steps, DA gamma
and beta; --lr-quant, no weight decay), linear warm-up then cosine decay, gradient clipping, batch-norm statistics
frozen. Every --eval-every steps the student is evaluated (box AP over IoU 0.50:0.95, and AP50) on a validation
split held out from the training pool. The post-training start is kept unless a checkpoint beats it with confidence:
on at least --select-confidence of the paired bootstrap resamples of the validation images (onnxquant_qat.validation);
among those that do, the best on the whole split is exported. So the result is never worse than the start on the
validation split, and a gain smaller than the split's noise does not replace it (--keep last exports the last step
instead).

    python3 -m onnxquant_qat.train --teacher detr_small.pt --recipe recipe.json --out out/ [--da] [--fqm]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
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

from .convert import ConversionReport, fold_batchnorm, load_recipe_weights, quantize_model
from .fqm import LAMBDA, TAU, fqm_all_layers
from .lsq import LsqQuantizer
from .modules import DistributionAlignment, QuantMultiheadAttention, QuantSplitAttention
from .recipe import Recipe
from .validation import ValidationDetections, bootstrap_resamples, detections_of, probability_better

BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class TrainConfig:
    stage1_steps: int = 100
    stage2_steps: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    lr_quant: float = 3e-4
    weight_decay: float = 1e-4
    distribution_alignment: bool = False
    query_matching: bool = False
    tau: float = TAU
    lam: float = LAMBDA
    seed: int = 0
    log_every: int = 10
    warmup: float = 0.1  # fraction of a stage's steps
    grad_clip: float = 0.1
    eval_every: int = 25
    keep: str = "best"  # "best": the best validation checkpoint (the start included); "last": the last step
    # A checkpoint replaces the post-training start only if it scores above it on at least this fraction of the
    # paired bootstrap resamples of the validation images (0: the best point estimate wins).
    select_confidence: float = 0.95
    resamples: int = 300


@dataclass
class StepLog:
    stage: int
    step: int
    loss: float
    loss_gt: float
    loss_fqm: float
    kept_queries: int
    lr: float = 0.0


@dataclass
class Validation:
    stage: int  # 0: the post-training start
    step: int
    ap50: float
    ap: float = float("nan")  # box AP over IoU 0.50:0.95, the selection score
    p_better: Optional[float] = None  # fraction of bootstrap resamples on which it beats the start (stage 2)


@dataclass
class TrainResult:
    logs: List[StepLog] = field(default_factory=list)
    validations: List[Validation] = field(default_factory=list)
    stage1: Optional[ConversionReport] = None
    stage2: Optional[ConversionReport] = None
    start_ap50: float = float("nan")
    start_ap: float = float("nan")
    kept: Optional[Validation] = None  # the checkpoint the student holds at the end
    seconds: float = 0.0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


@dataclass
class DataSplit:
    """The training pool split once: training images, a held-out validation split (never trained on; the best
    checkpoint is chosen on it), and the calibration batch (the first training images) that initializes steps the
    recipe does not give."""
    train_images: torch.Tensor
    train_targets: list
    val_images: torch.Tensor
    val_targets: list
    calib_images: torch.Tensor

    @staticmethod
    def of(images: torch.Tensor, targets: list, val_count: int, calib_count: int = 8) -> "DataSplit":
        if not 0 < val_count < len(targets):
            raise ValueError(f"validation split of {val_count} images needs a pool larger than that "
                             f"(the pool has {len(targets)})")
        n = len(targets) - val_count
        return DataSplit(images[:n], targets[:n], images[n:], targets[n:], images[:min(calib_count, n)])

    def batches(self, batch_size: int, seed: int) -> Batches:
        return Batches(self.train_images, self.train_targets, batch_size, seed)


def validation_detections(model: nn.Module, images: torch.Tensor, targets: list, device: torch.device,
                          chunk: int = 16) -> ValidationDetections:
    """The model's detections on held-out images (every query a detection: score = the highest real-class
    probability), matched against the targets at every IoU threshold of onnxquant_qat.validation."""
    from onnxquant_models.boxes import box_cxcywh_to_xyxy
    was_training = model.training
    model.eval()
    h, w = images.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    outputs, num_classes = [], 0
    with torch.no_grad():
        for start in range(0, len(targets), chunk):
            out = model(images[start:start + chunk].to(device))
            logits, boxes = out["pred_logits"].float().cpu(), out["pred_boxes"].float().cpu()
            num_classes = logits.shape[-1] - 1
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            xyxy = box_cxcywh_to_xyxy(boxes) * scale
            outputs += [(xyxy[i].numpy().astype(np.float64), scores[i].numpy().astype(np.float64), labels[i].numpy())
                        for i in range(len(logits))]
    if was_training:
        model.train()
        freeze_batchnorm(model)
    gts = [((box_cxcywh_to_xyxy(t["boxes"].float()) * scale).numpy().astype(np.float64), t["labels"].numpy())
           for t in targets]
    return detections_of(outputs, gts, num_classes)


def validation_ap50(model: nn.Module, images: torch.Tensor, targets: list, device: torch.device) -> float:
    """AP at IoU 0.5 of the model on held-out images (see validation_detections)."""
    return validation_detections(model, images, targets, device).ap50()


def calibrate(student: nn.Module, images: torch.Tensor, device: torch.device) -> None:
    """Initializes every activation quantizer without a step from the calibration batch (quantizers with a step
    from the recipe or an earlier stage keep it)."""
    was_training = student.training
    student.eval()
    with torch.no_grad():
        student(images.to(device))
    if was_training:
        student.train()
        freeze_batchnorm(student)


def init_alignment(student: nn.Module, teacher: nn.Module, images: torch.Tensor, device: torch.device) -> int:
    """DA from the teacher: the per-channel mean and variance of the query input of the teacher's co-attention
    (tgt + query_pos, over all queries of the calibration batch) become each aligned block's statistics, gamma and
    beta, so alignment is the identity but for what the query's quantizer sees. The query's input quantizer loses
    its step; call `calibrate` afterwards to set it from the normalized query. Returns how many blocks were
    initialized."""
    aligned = {n: m for n, m in student.named_modules()
               if isinstance(m, (QuantSplitAttention, QuantMultiheadAttention)) and m.align is not None}
    if not aligned:
        return 0
    captured: Dict[str, torch.Tensor] = {}
    # The query is the first positional argument of both attention forms as DETR calls them.
    hooks = [teacher.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: captured.__setitem__(name, args[0].detach())) for name in aligned]
    try:
        with torch.no_grad():
            teacher(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    for name, module in aligned.items():
        q = captured[name].reshape(-1, captured[name].shape[-1]).float()
        module.align_from(q.mean(dim=0), q.var(dim=0, unbiased=False))
    return len(aligned)


def _is_quantizer_param(module_of: Dict[int, nn.Module], p: nn.Parameter) -> bool:
    return isinstance(module_of.get(id(p)), (LsqQuantizer, DistributionAlignment))


def _param_groups(student: nn.Module, config: TrainConfig):
    owner: Dict[int, nn.Module] = {}
    for m in student.modules():
        for p in m.parameters(recurse=False):
            owner[id(p)] = m
    weights, quant = [], []
    for p in student.parameters():
        if p.requires_grad:
            (quant if _is_quantizer_param(owner, p) else weights).append(p)
    return [{"params": weights, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": quant, "lr": config.lr_quant, "weight_decay": 0.0}]


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of the steps, then cosine decay to 0 (step counts from 0)."""
    warm = max(1, int(round(warmup * steps)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


@dataclass
class _Candidate:
    validation: Validation
    state: dict
    resample_aps: Optional[np.ndarray] = None  # the start's AP on each bootstrap resample (the guard)


def _validate(model: nn.Module, split: DataSplit, device: torch.device, stage: int, step: int,
              config: TrainConfig, start: Optional[_Candidate]) -> tuple:
    """(Validation, AP per bootstrap resample) of the model; p_better against `start` when given."""
    detections = validation_detections(model, split.val_images, split.val_targets, device)
    aps = detections.resample_aps(bootstrap_resamples(len(detections), config.resamples))
    v = Validation(stage, step, detections.ap50(), detections.ap())
    if start is not None and start.resample_aps is not None:
        v.p_better = probability_better(aps, start.resample_aps) if len(aps) else float(v.ap > start.validation.ap)
    return v, aps


def _replaces(v: Validation, best: Optional[_Candidate], start: Optional[_Candidate], confidence: float) -> bool:
    """A checkpoint is kept over the current best when it scores higher, and, while a start is guarded, when it
    beats the start on at least `confidence` of the resamples. Ties keep the earlier checkpoint."""
    if best is None:
        return True
    if start is not None and confidence > 0 and not (v.p_better is not None and v.p_better >= confidence):
        return False
    return v.ap > best.validation.ap


def run_stage(student: nn.Module, teacher: nn.Module, criterion: nn.Module, batches: Batches, steps: int,
              stage: int, config: TrainConfig, device: torch.device, result: TrainResult,
              log: Callable[[str], None], split: DataSplit, best: Optional[_Candidate] = None) -> _Candidate:
    """Trains one stage and leaves the student at the kept checkpoint (the best on validation, or the last step).
    `best` is an earlier candidate of the same architecture (the post-training start) that a step must beat."""
    student.train()
    freeze_batchnorm(student)

    start = best  # the post-training start, guarded: only a checkpoint that beats it with confidence replaces it

    def evaluate(step: int) -> Validation:
        nonlocal best
        v, _ = _validate(student, split, device, stage, step, config, start)
        result.validations.append(v)
        if _replaces(v, best, start, config.select_confidence):
            best = _Candidate(v, copy.deepcopy(student.state_dict()))
        guard = f", beats the start on {100 * v.p_better:.0f} % of resamples" if v.p_better is not None else ""
        log(f"stage {stage} step {step} validation AP {v.ap:.4f} AP50 {v.ap50:.4f}{guard} (best AP "
            f"{best.validation.ap:.4f} at stage {best.validation.stage} step {best.validation.step})")
        return v

    evaluate(0)
    opt = torch.optim.AdamW(_param_groups(student, config))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, config.warmup))
    for step in range(1, steps + 1):
        images, targets = batches.next(device)
        out = student(images)
        loss_gt, _ = criterion(out, targets)
        loss = loss_gt
        fqm_value, kept = 0.0, 0
        if config.query_matching:
            with torch.no_grad():
                t_out = teacher(images)
            fqm = fqm_all_layers(out, t_out, [t["boxes"] for t in targets], config.tau)
            loss = loss + config.lam * fqm.loss
            fqm_value, kept = float(fqm.loss.detach()), fqm.kept
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        entry = StepLog(stage, step, float(loss.detach()), float(loss_gt.detach()), fqm_value, kept, lr)
        result.logs.append(entry)
        if step % config.log_every == 0 or step == steps:
            log(f"stage {stage} step {step}/{steps} loss {entry.loss:.4f} gt {entry.loss_gt:.4f} "
                f"fqm {entry.loss_fqm:.4f} kept {kept} lr {lr:.2e}")
        if step % config.eval_every == 0 or step == steps:
            evaluate(step)
    if config.keep == "best":
        student.load_state_dict(best.state)
        return best
    last = result.validations[-1]
    return _Candidate(last, copy.deepcopy(student.state_dict()))


def build_student(teacher: nn.Module, make_model: Callable[[], nn.Module], recipe: Recipe, scope: Callable[[str], bool],
                  align: bool = False) -> tuple:
    """A student with the teacher's weights (the recipe's post-training ones where it has them), batch norm folded,
    and the layers in `scope` quantized."""
    student = make_model()
    student.load_state_dict(teacher.state_dict())
    student.eval()
    fold_batchnorm(student)
    load_recipe_weights(student, recipe)  # a compiler recipe's weights: compensation carries over to the start
    report = quantize_model(student, recipe, scope=scope, align_query=align)
    return student, report


def post_training_student(teacher: nn.Module, make_model: Callable[[], nn.Module], recipe: Recipe, split: DataSplit,
                          device: torch.device, align: bool = False) -> nn.Module:
    """The start: every layer quantized at once from the recipe's grid (the calibration batch for the rest), DA
    (if asked) from the teacher's statistics, the query's input step calibrated on the normalized query. No
    training step."""
    student, _ = build_student(teacher, make_model, recipe, lambda name: True, align)
    student.to(device)
    init_alignment(student, teacher.to(device).eval(), split.calib_images, device)
    calibrate(student, split.calib_images, device)
    return student


def train_qdetr(teacher: nn.Module, make_model: Callable[[], nn.Module], criterion: nn.Module, recipe: Recipe,
                split: DataSplit, config: TrainConfig, device: torch.device, workdir: str,
                log: Callable[[str], None] = print, stage1_checkpoint: Optional[str] = None,
                stage1_only: bool = False) -> tuple:
    """Runs both stages and returns (student, TrainResult). The stage-1 checkpoint is written to
    <workdir>/stage1.pt and stage 2 is built from it, as the protocol prescribes. With `stage1_checkpoint` (a
    stage1.pt of an earlier run with the same recipe, e.g. shared by variants that differ only in stage 2) stage 1
    is not trained again. The post-training start is validated first and stays a candidate for the kept checkpoint."""
    set_seeds(config.seed)
    start = time.time()
    result = TrainResult()
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    backbone = lambda name: name.startswith(BACKBONE_PREFIX)
    batches = split.batches(config.batch_size, config.seed)

    start_candidate = None
    if not stage1_only:
        ptq = post_training_student(teacher, make_model, recipe, split, device, config.distribution_alignment)
        v, aps = _validate(ptq, split, device, 0, 0, config, None)
        result.validations.append(v)
        result.start_ap50 = v.ap50
        result.start_ap = v.ap
        start_candidate = _Candidate(v, copy.deepcopy(ptq.state_dict()), aps)
        log(f"post-training start: validation AP {v.ap:.4f} AP50 {v.ap50:.4f}")
        del ptq

    student, result.stage1 = build_student(teacher, make_model, recipe, backbone)
    if stage1_checkpoint:
        stage1_path = stage1_checkpoint
        log(f"stage 1 from {stage1_checkpoint}")
    else:
        student.to(device)
        calibrate(student, split.calib_images, device)
        run_stage(student, teacher, criterion, batches, config.stage1_steps, 1, config, device, result, log, split)
        os.makedirs(workdir, exist_ok=True)
        stage1_path = os.path.join(workdir, "stage1.pt")
        torch.save(student.state_dict(), stage1_path)
    if stage1_only:
        result.seconds = time.time() - start
        return student, result

    student, _ = build_student(teacher, make_model, recipe, backbone)
    try:
        student.load_state_dict(torch.load(stage1_path, map_location="cpu"))
    except RuntimeError as e:
        raise ValueError(f"{stage1_path} is not a stage-1 checkpoint of this model and recipe: {e}") from None
    result.stage2 = quantize_model(student, recipe, scope=lambda name: not backbone(name),
                                   align_query=config.distribution_alignment)
    student.to(device)
    init_alignment(student, teacher, split.calib_images, device)
    calibrate(student, split.calib_images, device)
    kept = run_stage(student, teacher, criterion, batches, config.stage2_steps, 2, config, device, result, log, split,
                     best=start_candidate)
    result.kept = kept.validation
    log(f"kept: stage {kept.validation.stage} step {kept.validation.step}, validation AP {kept.validation.ap:.4f} "
        f"AP50 {kept.validation.ap50:.4f} (start {result.start_ap:.4f} / {result.start_ap50:.4f})")
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


def start_run(teacher: nn.Module, make_model: Callable[[], nn.Module], recipe: Recipe, split: DataSplit,
              config: TrainConfig, device: torch.device) -> tuple:
    """(student, TrainResult) of the post-training start, validated, for exporting it as the no-QAT reference."""
    set_seeds(config.seed)
    start = time.time()
    teacher = teacher.to(device).eval()
    student, report = build_student(teacher, make_model, recipe, lambda name: True, config.distribution_alignment)
    student.to(device)
    init_alignment(student, teacher, split.calib_images, device)
    calibrate(student, split.calib_images, device)
    v, _ = _validate(student, split, device, 0, 0, config, None)
    result = TrainResult(validations=[v], stage1=report, stage2=ConversionReport(), start_ap50=v.ap50,
                         start_ap=v.ap, kept=v,
                         seconds=time.time() - start)
    return student, result


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
        "lr": config.lr, "lr_quant": config.lr_quant, "weight_decay": config.weight_decay, "warmup": config.warmup,
        "grad_clip": config.grad_clip, "eval_every": config.eval_every, "keep": config.keep, "seed": config.seed,
        "device": str(device), "seconds": round(result.seconds, 1),
        "start_validation_ap50": result.start_ap50,
        "start_validation_ap": result.start_ap,
        "select_confidence": config.select_confidence, "resamples": config.resamples,
        "kept": asdict(result.kept) if result.kept else None,
        "quantized_layers": [asdict(c) for c in result.stage1.converted + result.stage2.converted],
        "float_layers": sorted(set(result.stage1.kept_float + result.stage2.kept_float)),
        "validations": [asdict(v) for v in result.validations],
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
    p.add_argument("--start-only", action="store_true",
                   help="export the post-training start (no step); from a compiler recipe it computes what the "
                        "compiled model does")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of weights and biases")
    p.add_argument("--lr-quant", type=float, default=3e-4, help="learning rate of LSQ steps and DA gamma/beta")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of each stage (then cosine decay)")
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=25, help="validate every N steps (and at each stage's end)")
    p.add_argument("--keep", choices=("best", "last"), default="best",
                   help="export the best validation checkpoint, the start included (default), or the last step")
    p.add_argument("--select-confidence", type=float, default=0.95,
                   help="a checkpoint replaces the post-training start only if it beats it on this fraction of the "
                        "bootstrap resamples of the validation images (0: the best validation score wins)")
    p.add_argument("--resamples", type=int, default=300, help="bootstrap resamples of the validation images")
    p.add_argument("--tau", type=float, default=TAU)
    p.add_argument("--lam", type=float, default=LAMBDA)
    p.add_argument("--train-images", type=int, default=512, help="training pool, validation split included")
    p.add_argument("--val-images", type=int, default=64, help="held out from the pool for checkpoint selection")
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
    config = TrainConfig(stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, batch_size=args.batch_size,
                         lr=args.lr, lr_quant=args.lr_quant, distribution_alignment=args.da,
                         query_matching=args.fqm, tau=args.tau, lam=args.lam, seed=args.seed, warmup=args.warmup,
                         grad_clip=args.grad_clip, eval_every=args.eval_every, keep=args.keep,
                         select_confidence=args.select_confidence, resamples=args.resamples)
    images, targets = pool((args.data_seed, args.train_images, args.image_size), args.pool_cache)
    split = DataSplit.of(images, targets, args.val_images)
    log = lambda line: print(line, flush=True)
    log(f"recipe {recipe.label} ({recipe.source}), da={args.da}, fqm={args.fqm}, device {device}")
    if args.start_only:
        student, result = start_run(teacher, make_model, recipe, split, config, device)
        write_run(student, result, recipe, config, args.out, args.image_size, device)
        log(f"post-training start (validation AP50 {result.start_ap50:.4f}): {args.out}/student.onnx")
        return 0
    student, result = train_qdetr(teacher, make_model, criterion.to(device), recipe, split, config, device,
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
