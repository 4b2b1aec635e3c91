"""Box helpers. Boxes are normalized (cx, cy, w, h) unless a name says xyxy."""
import torch


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def pairwise_giou(a_xyxy: torch.Tensor, b_xyxy: torch.Tensor) -> torch.Tensor:
    """Generalized IoU between every box of a [N, 4] and of b [M, 4] (xyxy), as [N, M]. Degenerate (zero-area)
    boxes give IoU 0 rather than NaN."""
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]).clamp(min=0) * (a_xyxy[:, 3] - a_xyxy[:, 1]).clamp(min=0)
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]).clamp(min=0) * (b_xyxy[:, 3] - b_xyxy[:, 1]).clamp(min=0)
    lt = torch.max(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = torch.min(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=1e-9)
    lt_c = torch.min(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb_c = torch.max(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)
