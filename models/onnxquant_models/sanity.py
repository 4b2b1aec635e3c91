"""Python-side sanity check of the trained models on the committed eval split (see metrics.py)."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNN

from .detr import DETR, decode_detr
from .export import MaskRcnnExport
from .metrics import GroundTruth, Prediction, SanityMetrics, sanity_metrics


def ground_truth(annotations: Dict[str, object]) -> List[GroundTruth]:
    return [GroundTruth(a["image_id"], a["category_id"],
                        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
            for a in annotations["annotations"]]


@torch.no_grad()
def detr_sanity(model: DETR, images: np.ndarray, annotations: Dict[str, object], batch: int = 16) -> SanityMetrics:
    model.eval()
    h, w = images.shape[2:]
    preds: List[Prediction] = []
    for start in range(0, len(images), batch):
        out = model(torch.from_numpy(images[start:start + batch]))
        for k, dets in enumerate(decode_detr(out["pred_logits"], out["pred_boxes"], w, h)):
            preds += [Prediction(start + k + 1, d.category_id, d.score, d.box_xyxy) for d in dets]
    return sanity_metrics(preds, ground_truth(annotations))


@torch.no_grad()
def maskrcnn_sanity(model: MaskRCNN, images: np.ndarray, annotations: Dict[str, object]) -> SanityMetrics:
    """Runs the same code path as the exported graph (one image per call)."""
    model.eval()
    wrapper = MaskRcnnExport(model)
    preds: List[Prediction] = []
    for k in range(len(images)):
        boxes, labels, scores = wrapper(torch.from_numpy(images[k:k + 1]))[:3]
        preds += [Prediction(k + 1, int(c), float(s), tuple(float(v) for v in b))
                  for b, c, s in zip(boxes, labels, scores)]
    return sanity_metrics(preds, ground_truth(annotations))
