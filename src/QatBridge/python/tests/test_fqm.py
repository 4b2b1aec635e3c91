import torch

from onnxquant_qat.fqm import fqm_distillation_loss, match_teacher_queries, select_foreground_queries

# cxcywh, normalized
GT = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.3, 0.3]])
STUDENT = torch.tensor([
    [0.25, 0.25, 0.2, 0.2],    # 0: exactly on gt 0 (G_0 = 1)
    [0.27, 0.26, 0.2, 0.2],    # 1: close to gt 0, GIoU ~0.8 > 0.6
    [0.35, 0.25, 0.2, 0.2],    # 2: half off gt 0, GIoU ~0.33 < 0.6
    [0.76, 0.74, 0.28, 0.3],   # 3: best on gt 1
    [0.50, 0.50, 0.05, 0.05],  # 4: background
])


def test_keeps_queries_within_tau_of_the_best_per_ground_truth():
    keep = select_foreground_queries(STUDENT, GT, tau=0.6)
    assert keep.tolist() == [True, True, False, True, False]
    # tau = 0 keeps every query overlapping better than the worst GIoU 0 bound; tau = 1 keeps only the best ones
    assert select_foreground_queries(STUDENT, GT, tau=1.0 - 1e-6).tolist() == [True, False, False, True, False]
    assert not select_foreground_queries(STUDENT, torch.zeros(0, 4)).any()


def test_picks_the_teacher_query_maximizing_2giou_minus_5l1():
    teacher = torch.tensor([
        [0.76, 0.75, 0.3, 0.3],   # 0: matches student 3
        [0.5, 0.5, 0.9, 0.9],     # 1: huge box covering everything (GIoU with small boxes is low)
        [0.26, 0.25, 0.2, 0.2],   # 2: matches students 0 and 1
        [0.36, 0.25, 0.2, 0.2],   # 3: matches student 2
    ])
    assert match_teacher_queries(STUDENT[:4], teacher).tolist() == [2, 2, 3, 0]


def test_loss_is_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    feats = torch.randn(1, 5, 16)
    boxes = STUDENT[None]
    same = fqm_distillation_loss(feats, feats.clone(), boxes, boxes.clone(), [GT])
    assert same.kept == 3 and float(same.loss) == 0.0
    other = fqm_distillation_loss(feats + 1.0, feats, boxes, boxes, [GT])
    keep = select_foreground_queries(STUDENT, GT)
    expected = float((4.0 / feats[0, keep].norm(dim=-1)).mean())  # ||1||_2 over 16 channels, over each teacher norm
    assert abs(float(other.loss) - expected) < 1e-5


def test_loss_does_not_depend_on_the_feature_scale():
    torch.manual_seed(1)
    s, t = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    boxes = STUDENT[None]
    small = fqm_distillation_loss(s, t, boxes, boxes, [GT])
    large = fqm_distillation_loss(50.0 * s, 50.0 * t, boxes, boxes, [GT])
    assert abs(float(small.loss) - float(large.loss)) < 1e-5 and small.kept == large.kept


def test_loss_gradient_reaches_only_student_features():
    s = torch.randn(1, 5, 4, requires_grad=True)
    t = torch.randn(1, 5, 4, requires_grad=True)
    fqm_distillation_loss(s, t, STUDENT[None], STUDENT[None], [GT]).loss.backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert s.grad[0, [2, 4]].abs().sum() == 0  # dropped queries get no gradient


def test_fqm_covers_every_decoder_layer():
    from onnxquant_qat.fqm import fqm_all_layers
    boxes = STUDENT[None]
    feats = [torch.ones(1, 5, 8) for _ in range(3)]  # norm sqrt(8) everywhere
    teacher = {"decoder_features": feats[2], "pred_boxes": boxes,
               "aux_outputs": [{"decoder_features": f, "pred_boxes": boxes} for f in feats[:2]]}
    same = {"decoder_features": feats[2].clone(), "pred_boxes": boxes,
            "aux_outputs": [{"decoder_features": f.clone(), "pred_boxes": boxes} for f in feats[:2]]}
    assert float(fqm_all_layers(same, teacher, [GT]).loss) == 0.0
    # Moving only the first layer's features: the last-layer loss is blind to it, the all-layer loss is not.
    same["aux_outputs"][0]["decoder_features"] = feats[0] + 1.0
    result = fqm_all_layers(same, teacher, [GT])
    kept_per_layer = int(select_foreground_queries(STUDENT, GT).sum())
    assert result.kept == 3 * kept_per_layer
    expected = 1.0 / 3  # distance sqrt(8) over a teacher norm of sqrt(8), on every kept query of one layer of three
    assert abs(float(result.loss) - expected) < 1e-5
