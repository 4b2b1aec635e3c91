"""Foreground-aware query matching (Q-DETR): distil the teacher's decoder co-attention features into the student's,
only for the student queries that sit on ground-truth objects, each from the teacher query that best matches it.

For one image with ground-truth boxes gt_i and student boxes b_j^S:
  G_i = max_j GIoU(gt_i, b_j^S);  query j is kept if GIoU(gt_i, b_j^S) > tau * G_i for some i;
  its teacher query is k* = argmax_k 2 GIoU(b_j^S, b_k^T) - 5 L1(b_j^S, b_k^T);
  L_FQM = mean over kept j of || D_j^S - D_k*^T ||_2 / || D_k*^T ||_2.

The distance is relative to the teacher feature's norm, so lambda = 2.5 weighs the term against the detection loss
alike whatever the width and scale of the decoder features. With the plain distance, on the small DETR (d_model 128)
the FQM term was about 5 x 2.5 against a detection loss of about 2.5: its gradient set the clipped update's direction,
the distance did not fall over 900 steps and the validation AP fell from 0.59 to 0.50; relative, it falls from 0.6 to
0.2 and the student ends above baseline QAT (4-4-8, seed 0: 0.643 against 0.622 validation AP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from onnxquant_models.boxes import box_cxcywh_to_xyxy, generalized_box_iou

TAU = 0.6
LAMBDA = 2.5
GIOU_WEIGHT = 2.0
L1_WEIGHT = 5.0
NORM_FLOOR = 1e-6  # a teacher feature of zero norm (never seen in practice) would divide by zero


def select_foreground_queries(student_boxes: torch.Tensor, gt_boxes: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Boolean mask [Nq] of the student queries kept for distillation (boxes cxcywh). No ground truth keeps none.
    A ground truth whose best GIoU is not positive keeps nothing: tau * G_i would exceed G_i itself."""
    if gt_boxes.numel() == 0:
        return torch.zeros(student_boxes.shape[0], dtype=torch.bool, device=student_boxes.device)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(gt_boxes), box_cxcywh_to_xyxy(student_boxes))  # [Ngt, Nq]
    best = giou.max(dim=1, keepdim=True).values
    return ((giou > tau * best) & (best > 0)).any(dim=0)


def match_teacher_queries(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> torch.Tensor:
    """For every student query, the index of the teacher query maximizing 2 GIoU - 5 L1 ([Nq] long)."""
    giou = generalized_box_iou(box_cxcywh_to_xyxy(student_boxes), box_cxcywh_to_xyxy(teacher_boxes))
    l1 = torch.cdist(student_boxes, teacher_boxes, p=1)
    return (GIOU_WEIGHT * giou - L1_WEIGHT * l1).argmax(dim=1)


@dataclass(frozen=True)
class FqmResult:
    loss: torch.Tensor
    kept: int


def fqm_distillation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                          student_boxes: torch.Tensor, teacher_boxes: torch.Tensor,
                          gt_boxes: List[torch.Tensor], tau: float = TAU) -> FqmResult:
    """student/teacher features [B, Nq, D] (decoder co-attention output), boxes [B, Nq, 4] cxcywh, gt_boxes one
    [Ngt, 4] tensor per image. Returns the mean relative L2 distance over all kept queries of the batch (0 if none)."""
    distances = []
    with torch.no_grad():
        sb, tb = student_boxes.detach().float(), teacher_boxes.detach().float()
    for i, gt in enumerate(gt_boxes):
        keep = select_foreground_queries(sb[i], gt.to(sb.device).float(), tau)
        if not bool(keep.any()):
            continue
        k_star = match_teacher_queries(sb[i][keep], tb[i])
        target = teacher_features[i][k_star].detach()
        distances.append((student_features[i][keep] - target).norm(dim=-1) / target.norm(dim=-1).clamp_min(NORM_FLOOR))
    if not distances:
        return FqmResult(student_features.sum() * 0.0, 0)
    all_d = torch.cat(distances)
    return FqmResult(all_d.mean(), int(all_d.numel()))


def fqm_all_layers(student_out: dict, teacher_out: dict, gt_boxes: List[torch.Tensor], tau: float = TAU) -> FqmResult:
    """FQM on every decoder layer: layer l's student features and boxes against the teacher's layer l (the
    auxiliary outputs, then the last layer), each with its own foreground selection and teacher matching; the loss
    is the mean over layers, `kept` the total of kept queries."""
    pairs = list(zip(student_out.get("aux_outputs", []), teacher_out.get("aux_outputs", [])))
    pairs.append((student_out, teacher_out))
    losses, kept = [], 0
    for s, t in pairs:
        r = fqm_distillation_loss(s["decoder_features"], t["decoder_features"], s["pred_boxes"], t["pred_boxes"],
                                  gt_boxes, tau)
        losses.append(r.loss)
        kept += r.kept
    return FqmResult(torch.stack(losses).mean(), kept)
