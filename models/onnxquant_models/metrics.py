"""A quick Python-side sanity metric for the trained models (the authoritative COCO AP is computed in C# by
`onnxquant eval`): per-class AP at IoU 0.5 (all-point interpolation, all objects, no area ranges) averaged over
classes, and F1 at IoU 0.5 for detections above a score threshold."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Prediction:
    image: int
    category_id: int
    score: float
    box_xyxy: Tuple[float, float, float, float]


@dataclass(frozen=True)
class GroundTruth:
    image: int
    category_id: int
    box_xyxy: Tuple[float, float, float, float]


@dataclass(frozen=True)
class SanityMetrics:
    ap50: float
    f1_at_05: float
    precision: float
    recall: float

    def __str__(self) -> str:
        return (f"AP50 {self.ap50:.3f}  F1 {self.f1_at_05:.3f} (P {self.precision:.3f}, R {self.recall:.3f}, "
                f"score > 0.5)")


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _greedy_match(preds: List[Prediction], gts: List[GroundTruth]) -> List[bool]:
    """Marks each prediction (in descending score order) true positive if it takes an unmatched same-class ground
    truth with IoU >= 0.5."""
    by_key: Dict[Tuple[int, int], List[int]] = {}
    for k, g in enumerate(gts):
        by_key.setdefault((g.image, g.category_id), []).append(k)
    taken = [False] * len(gts)
    result = []
    for p in preds:
        best, best_iou = -1, 0.5
        for k in by_key.get((p.image, p.category_id), []):
            if not taken[k]:
                v = iou(p.box_xyxy, gts[k].box_xyxy)
                if v >= best_iou:
                    best, best_iou = k, v
        if best >= 0:
            taken[best] = True
        result.append(best >= 0)
    return result


def sanity_metrics(preds: Sequence[Prediction], gts: Sequence[GroundTruth], threshold: float = 0.5
                   ) -> SanityMetrics:
    preds = sorted(preds, key=lambda p: (-p.score, p.image, p.category_id))
    gts = list(gts)
    aps = []
    for c in sorted({g.category_id for g in gts}):
        cp = [p for p in preds if p.category_id == c]
        cg = [g for g in gts if g.category_id == c]
        tp = np.array(_greedy_match(cp, cg), dtype=np.float64)
        if len(tp) == 0:
            aps.append(0.0)
            continue
        ctp = np.cumsum(tp)
        recall = ctp / len(cg)
        precision = ctp / np.arange(1, len(tp) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        r_prev = np.concatenate([[0.0], recall[:-1]])
        aps.append(float(np.sum((recall - r_prev) * precision)))
    confident = [p for p in preds if p.score > threshold]
    tp = sum(_greedy_match(confident, gts))
    precision = tp / len(confident) if confident else 0.0
    recall = tp / len(gts) if gts else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SanityMetrics(ap50=float(np.mean(aps)) if aps else 0.0, f1_at_05=f1, precision=precision, recall=recall)
