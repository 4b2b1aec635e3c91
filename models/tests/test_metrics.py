import pytest

from onnxquant_models.metrics import GroundTruth, Prediction, iou, sanity_metrics


def test_iou_hand_value():
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_sanity_metrics_hand_case():
    gts = [GroundTruth(1, 1, (0, 0, 10, 10)), GroundTruth(1, 2, (20, 20, 30, 30)), GroundTruth(2, 1, (0, 0, 10, 10))]
    preds = [
        Prediction(1, 1, 0.9, (0, 0, 10, 10)),  # TP
        Prediction(1, 1, 0.8, (0, 0, 10, 11)),  # duplicate: FP
        Prediction(2, 1, 0.7, (0, 0, 10, 10)),  # TP
        Prediction(1, 2, 0.6, (50, 50, 60, 60)),  # wrong place: FP, class 2 recall 0
    ]
    m = sanity_metrics(preds, gts)
    # Class 1: TP, FP, TP -> precision envelope 1, 2/3 at recall 0.5, 1.0 -> AP 0.5 + 0.5 * 2/3. Class 2: 0.
    assert m.ap50 == pytest.approx((0.5 + 0.5 * 2 / 3 + 0.0) / 2)
    assert m.precision == pytest.approx(2 / 4) and m.recall == pytest.approx(2 / 3)
