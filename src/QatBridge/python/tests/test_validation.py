"""Checkpoint selection: the AP over IoU thresholds, its bootstrap resamples, and the guard of the start."""
import numpy as np
import pytest

from onnxquant_models.metrics import GroundTruth, Prediction, sanity_metrics
from onnxquant_qat.train import Validation, _Candidate, _replaces
from onnxquant_qat.validation import (IOU_THRESHOLDS, ValidationDetections, bootstrap_resamples, detections_of,
                                      match_image, probability_better)

CLASSES = 3


def _scene(rng, images=40, queries=8):
    """Random ground truth and detections that overlap it with random jitter, plus random false positives."""
    outputs, targets = [], []
    for _ in range(images):
        g = int(rng.integers(1, 4))
        xy = rng.uniform(0, 80, size=(g, 2))
        wh = rng.uniform(10, 40, size=(g, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
        gt_classes = rng.integers(0, CLASSES, size=g)
        boxes = np.concatenate([gt + rng.normal(0, 4, size=gt.shape), rng.uniform(0, 60, size=(queries - g, 2))
                                .repeat(2, axis=1) + np.array([0, 0, 20, 20])])
        classes = np.concatenate([np.where(rng.random(g) < 0.8, gt_classes, (gt_classes + 1) % CLASSES),
                                  rng.integers(0, CLASSES, size=queries - g)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, size=g), rng.uniform(0.0, 0.7, size=queries - g)])
        outputs.append((boxes, scores, classes))
        targets.append((gt, gt_classes))
    return outputs, targets


def test_perfect_detections_have_ap_one_at_every_threshold():
    rng = np.random.default_rng(0)
    _, targets = _scene(rng)
    outputs = [(gt.copy(), np.linspace(0.9, 0.5, len(gt)), classes.copy()) for gt, classes in targets]
    det = detections_of(outputs, targets, CLASSES)
    assert np.allclose(det.ap_per_threshold(), 1.0) and det.ap() == pytest.approx(1.0)


def test_ap50_equals_the_models_sanity_metric():
    # An independent implementation (onnxquant_models.metrics) of the same AP at IoU 0.5, on the same detections.
    rng = np.random.default_rng(1)
    outputs, targets = _scene(rng)
    det = detections_of(outputs, targets, CLASSES)
    preds = [Prediction(i, int(c) + 1, float(s), tuple(b)) for i, (boxes, scores, classes) in enumerate(outputs)
             for b, s, c in zip(boxes, scores, classes)]
    gts = [GroundTruth(i, int(c) + 1, tuple(b)) for i, (gt, classes) in enumerate(targets) for b, c in zip(gt, classes)]
    expected = sanity_metrics(preds, gts).ap50
    assert 0.2 < expected < 0.95  # not a degenerate case
    assert det.ap50() == pytest.approx(expected, abs=1e-12)
    # Stricter thresholds can only find fewer matches.
    per = det.ap_per_threshold()
    assert len(per) == len(IOU_THRESHOLDS) == 10 and all(np.diff(per) <= 1e-12)


def test_a_resample_counts_a_repeated_image_as_often_as_it_is_drawn():
    rng = np.random.default_rng(2)
    outputs, targets = _scene(rng, images=6)
    det = detections_of(outputs, targets, CLASSES)
    draw = np.array([0, 0, 3, 5, 5, 5])
    explicit = detections_of([outputs[i] for i in draw], [targets[i] for i in draw], CLASSES)
    assert det.ap(draw) == pytest.approx(explicit.ap(), abs=1e-12)
    assert np.array_equal(bootstrap_resamples(6, 4), bootstrap_resamples(6, 4))


def test_the_bootstrap_separates_a_real_gain_from_none():
    rng = np.random.default_rng(3)
    outputs, targets = _scene(rng, images=80)
    reference = detections_of(outputs, targets, CLASSES)
    resamples = bootstrap_resamples(80, 200)
    reference_aps = reference.resample_aps(resamples)
    assert probability_better(reference_aps, reference_aps) == 0.0  # ties never count as a win
    # Every image's true objects found with a higher score than its false positives: a clear gain.
    better = detections_of([(np.concatenate([gt, b[len(gt):]]), np.concatenate([np.full(len(gt), 2.0), s[len(gt):]]),
                             np.concatenate([gc, c[len(gt):]])) for (b, s, c), (gt, gc) in zip(outputs, targets)],
                           targets, CLASSES)
    assert better.ap() > reference.ap() + 0.1
    assert probability_better(better.resample_aps(resamples), reference_aps) == 1.0


def _validation(ap, p):
    return Validation(2, 100, ap50=ap, ap=ap, p_better=p)


def test_a_checkpoint_replaces_the_start_only_with_confidence():
    start = _Candidate(Validation(0, 0, ap50=0.30, ap=0.30), {})
    # Higher on the whole split but above the start on only 90 % of the resamples: the start stays.
    assert not _replaces(_validation(0.32, 0.90), start, start, 0.95)
    assert _replaces(_validation(0.32, 0.97), start, start, 0.95)
    # Without the guard the point estimate decides.
    assert _replaces(_validation(0.32, 0.10), start, start, 0.0)
    # Once a confident checkpoint is kept, a later one must also beat the start with confidence and score higher.
    kept = _Candidate(_validation(0.34, 0.99), {})
    assert not _replaces(_validation(0.33, 0.99), kept, start, 0.95)
    assert not _replaces(_validation(0.36, 0.50), kept, start, 0.95)
    assert _replaces(_validation(0.36, 0.96), kept, start, 0.95)
    # Stage 1 has no start to guard: the best score wins, ties keep the earlier checkpoint.
    first = _Candidate(Validation(1, 0, ap50=0.2, ap=0.2), {})
    assert _replaces(Validation(1, 10, ap50=0.21, ap=0.21), first, None, 0.95)
    assert not _replaces(Validation(1, 10, ap50=0.2, ap=0.2), first, None, 0.95)
