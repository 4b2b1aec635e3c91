"""Checkpoint selection on a held-out validation split, guarded against its noise.

A validation split of a few hundred images is a noisy judge: a checkpoint that scores higher on it by chance can
score lower than the post-training start on other held-out images. So a checkpoint replaces the start only when it is
better with confidence: on B paired bootstrap resamples of the validation images (the same resamples for every
checkpoint of a run), it must score above the start on at least a fraction `confidence` of them. Among the
checkpoints that pass, the one with the highest score on the whole split is kept.

The score is box AP averaged over the IoU thresholds 0.50, 0.55, ..., 0.95 (COCO's), per class with all-point
interpolated precision, classes averaged; all queries are detections. Matching is greedy per image (predictions in
descending score order take the unmatched same-class ground truth of highest IoU at or above the threshold), so the
AP of any multiset of images follows from per-image true-positive flags without matching again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
BOOTSTRAP_SEED = 20240


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [P, 4] against every box of b [G, 4] (xyxy)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass(frozen=True)
class ImageDetections:
    """One image: its detections (scores, classes, true-positive flags [D, T] per IoU threshold) and the number of
    ground-truth objects per class (indexed by class id)."""
    scores: np.ndarray
    classes: np.ndarray
    tp: np.ndarray
    gt_per_class: np.ndarray


def match_image(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, gt_boxes: np.ndarray,
                gt_classes: np.ndarray, num_classes: int) -> ImageDetections:
    """Greedy matching of one image's detections at every threshold of IOU_THRESHOLDS (boxes xyxy, class ids in
    [0, num_classes))."""
    order = np.lexsort((np.arange(len(scores)), -scores))  # score descending, ties by query index
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    tp = np.zeros((len(scores), len(IOU_THRESHOLDS)), dtype=bool)
    if len(gt_boxes) and len(boxes):
        ious = _iou_matrix(boxes, gt_boxes)
        ious[classes[:, None] != gt_classes[None, :]] = -1.0
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(gt_boxes), dtype=bool)
            for d in range(len(boxes)):
                candidates = np.where(taken, -1.0, ious[d])
                best = int(np.argmax(candidates))
                if candidates[best] >= threshold:
                    taken[best] = True
                    tp[d, t] = True
    gt_per_class = np.bincount(gt_classes.astype(np.int64), minlength=num_classes)[:num_classes]
    return ImageDetections(scores, classes, tp, gt_per_class)


class ValidationDetections:
    """A model's matched detections on the validation images, from which AP on the whole split or on any resample
    of its images is computed."""

    def __init__(self, images: Sequence[ImageDetections], num_classes: int):
        self.num_classes = num_classes
        self.counts = np.array([len(i.scores) for i in images], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.scores = np.concatenate([i.scores for i in images]) if images else np.zeros(0)
        self.classes = np.concatenate([i.classes for i in images]) if images else np.zeros(0, dtype=np.int64)
        self.tp = np.concatenate([i.tp for i in images]) if images else np.zeros((0, len(IOU_THRESHOLDS)), bool)
        self.gt = np.stack([i.gt_per_class for i in images]) if images else np.zeros((0, num_classes), np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def ap_per_threshold(self, images: Optional[np.ndarray] = None) -> np.ndarray:
        """AP at each IoU threshold over `images` (indices, repeats allowed; all images when None), averaged over
        the classes that have ground truth there."""
        if images is None:
            images = np.arange(len(self))
        weights = np.bincount(images, minlength=len(self))
        det_weight = np.repeat(weights, self.counts)
        keep = det_weight > 0
        scores, classes, tp, w = self.scores[keep], self.classes[keep], self.tp[keep], det_weight[keep]
        gt = (self.gt * weights[:, None]).sum(axis=0)
        per_class = []
        for c in range(self.num_classes):
            if gt[c] == 0:
                continue
            mine = classes == c
            if not mine.any():
                per_class.append(np.zeros(len(IOU_THRESHOLDS)))
                continue
            s, t, k = scores[mine], tp[mine], w[mine]
            order = np.lexsort((np.arange(len(s)), -s))
            t, k = t[order], k[order]
            # A repeated image contributes its detections that many times: weights multiply the counts.
            ctp = np.cumsum(t * k[:, None], axis=0)
            seen = np.cumsum(k)[:, None]
            recall = ctp / gt[c]
            precision = ctp / seen
            precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
            r_prev = np.vstack([np.zeros((1, recall.shape[1])), recall[:-1]])
            per_class.append(((recall - r_prev) * precision).sum(axis=0))
        if not per_class:
            return np.zeros(len(IOU_THRESHOLDS))
        return np.mean(per_class, axis=0)

    def ap(self, images: Optional[np.ndarray] = None) -> float:
        return float(self.ap_per_threshold(images).mean())

    def ap50(self, images: Optional[np.ndarray] = None) -> float:
        return float(self.ap_per_threshold(images)[0])

    def resample_aps(self, resamples: np.ndarray) -> np.ndarray:
        """AP on each resample (rows of bootstrap_resamples)."""
        return np.array([self.ap(r) for r in resamples])


def bootstrap_resamples(images: int, count: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[count, images] image indices drawn with replacement, the same for every call with the same arguments."""
    return np.random.default_rng(seed).integers(0, images, size=(count, images))


def probability_better(candidate_aps: np.ndarray, reference_aps: np.ndarray) -> float:
    """The fraction of paired resamples on which the candidate's AP is strictly above the reference's (the arrays of
    ValidationDetections.resample_aps over the same resamples)."""
    return float(np.mean(candidate_aps > reference_aps)) if len(candidate_aps) else 0.0


def detections_of(outputs: List[tuple], targets: list, num_classes: int) -> ValidationDetections:
    """outputs: per image (boxes xyxy [Q, 4], scores [Q], class ids [Q]) as numpy; targets: per image
    (gt boxes xyxy [G, 4], gt class ids [G])."""
    images = [match_image(b, s, c, gb, gc, num_classes) for (b, s, c), (gb, gc) in zip(outputs, targets)]
    return ValidationDetections(images, num_classes)
