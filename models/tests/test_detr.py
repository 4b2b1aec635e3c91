import pytest
import torch

from onnxquant_models.detr import (DETR, HungarianMatcher, MatchWeights, SetCriterion, box_cxcywh_to_xyxy,
                                   decode_detr, detr_r50, detr_small, detr_tiny, generalized_box_iou)


@pytest.mark.parametrize("box_refine", [True, False])
def test_forward_exposes_predictions_aux_outputs_and_features(box_refine):
    torch.manual_seed(0)
    config = detr_tiny()
    config = type(config)(**{**config.__dict__, "box_refine": box_refine})
    model = DETR(config).eval()
    out = model(torch.randn(2, 3, 64, 64))
    q, k, d = config.num_queries, config.num_classes, config.d_model
    assert out["pred_logits"].shape == (2, q, k + 1)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert out["decoder_features"].shape == (2, q, d)
    assert out["backbone_feature"].shape == (2, config.backbone_channels, 64 // config.stride, 64 // config.stride)
    assert len(out["aux_outputs"]) == config.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, q, k + 1) and aux["decoder_features"].shape == (2, q, d)
    assert torch.all((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1))


def test_configs_have_the_published_and_small_shapes():
    full = detr_r50()
    assert (full.d_model, full.enc_layers, full.dec_layers, full.num_queries, full.nhead) == (256, 6, 6, 100, 8)
    assert full.backbone_channels == 2048 and full.stride == 32
    small = detr_small()
    assert small.stride == 16 and small.box_refine
    assert sum(p.numel() for p in DETR(small).parameters()) < 2_000_000  # committed fixture stays < 10 MB


def test_generalized_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    g = generalized_box_iou(a, b)[0]
    # Overlap 1, union 7, hull 9: 1/7 - 2/9. Identical: 1. Disjoint: 0 - (4*2 - 5)/8.
    assert torch.allclose(g, torch.tensor([1 / 7 - 2 / 9, 1.0, -3 / 8]), atol=1e-6)


def test_matcher_assigns_each_target_to_its_obvious_prediction():
    logits = torch.full((1, 3, 6), -10.0)
    logits[0, 0, 2] = 10  # query 0: class 2 at the top-left box
    logits[0, 1, 0] = 10  # query 1: class 0 at the bottom-right box
    logits[0, 2, 5] = 10  # query 2: no object
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])}]
    (rows, cols), = HungarianMatcher()(logits, boxes, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matcher_prefers_the_globally_cheapest_assignment():
    # Box cost only: greedy (target 0 -> query 0) would leave target 1 the far query 1; the optimum swaps them.
    logits = torch.zeros(1, 2, 3)
    boxes = torch.tensor([[[0.50, 0.5, 0.2, 0.2], [0.10, 0.5, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0, 0]), "boxes": torch.tensor([[0.45, 0.5, 0.2, 0.2], [0.55, 0.5, 0.2, 0.2]])}]
    matcher = HungarianMatcher(MatchWeights(cls=0.0, l1=1.0, giou=0.0))
    (rows, cols), = matcher(logits, boxes, targets)
    # Costs: q0-t0 0.05, q0-t1 0.05, q1-t0 0.35, q1-t1 0.45 -> optimum q0-t1, q1-t0 (0.40 < 0.50).
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_matcher_handles_images_without_objects():
    out = HungarianMatcher()(torch.zeros(1, 4, 3), torch.full((1, 4, 4), 0.5),
                             [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    assert out[0][0].numel() == 0 and out[0][1].numel() == 0


def test_criterion_box_terms_vanish_for_exact_boxes_and_aux_layers_add_up():
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])}
    boxes = torch.tensor([[[0.4, 0.4, 0.2, 0.3], [0.8, 0.8, 0.1, 0.1]]])
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]])
    criterion = SetCriterion(num_classes=2)
    total, terms = criterion({"pred_logits": logits, "pred_boxes": boxes}, [target])
    assert terms["loss_bbox"] == pytest.approx(0.0, abs=1e-6)
    assert terms["loss_giou"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(terms["loss_ce"], rel=1e-5)
    with_aux, _ = criterion({"pred_logits": logits, "pred_boxes": boxes,
                             "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}]}, [target])
    assert with_aux.item() == pytest.approx(2 * total.item(), rel=1e-5)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = DETR(detr_tiny()).train()
    criterion = SetCriterion(5)
    images = torch.randn(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])},
               {"labels": torch.tensor([3, 0]), "boxes": torch.tensor([[0.6, 0.6, 0.3, 0.3], [0.2, 0.7, 0.2, 0.2]])}]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss, _ = criterion(model(images), targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_decode_converts_to_pixel_xyxy_and_excludes_no_object():
    logits = torch.tensor([[[0.0, 2.0, 9.0], [3.0, 0.0, 0.0]]])  # query 0 is mostly "no object"
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.25, 0.25, 0.5, 0.5]]])
    dets = decode_detr(logits, boxes, width=128, height=64)[0]
    assert dets[0].category_id == 1 and dets[0].box_xyxy == pytest.approx((0.0, 0.0, 64.0, 32.0))
    assert dets[1].category_id == 2 and dets[1].box_xyxy == pytest.approx((32.0, 24.0, 96.0, 40.0))
    assert dets[1].score == pytest.approx(torch.softmax(logits[0, 0], 0)[1].item())
    assert torch.allclose(box_cxcywh_to_xyxy(boxes)[0, 0], torch.tensor([0.25, 0.375, 0.75, 0.625]))
