"""ONNX export (opset 17) of the reference models with their backbone features as extra graph outputs.

Both graphs take one image per run with static shapes (so every shape computation folds to a constant):
DETR graph:       input  images [1, 3, H, W] float32 (ImageNet-normalised)
                  output pred_logits [1, Q, K+1] (softmax; last index = no object), pred_boxes [1, Q, 4]
                         (cx, cy, w, h normalised to 0..1), backbone_feature [1, C, H/s, W/s],
                         decoder_features [1, Q, d_model]
Mask-RCNN graph:  input  images [1, 3, H, W] float32 (ImageNet-normalised; one image per run)
                  output boxes [N, 4] (x0, y0, x1, y1 pixels), labels [N] int64 (category ids), scores [N],
                         masks [N, 1, H, W] (per-pixel probabilities pasted into the image; > 0.5 is the mask),
                         backbone.p2 .. backbone.p5 (pyramid features at strides 4, 8, 16, 32)
"""
from __future__ import annotations

import io
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNN

from .dataset import write_npz
from .detr import DETR
from .maskrcnn import FEATURE_NAMES

OPSET = 17
INPUT_NAME = "images"
# The one list of the DETR graph's outputs, in graph order (the QAT bridge's student export uses it too); the first two
# are the detections.
DETR_OUTPUTS = ("pred_logits", "pred_boxes", "backbone_feature", "decoder_features")
MASKRCNN_OUTPUTS = ("boxes", "labels", "scores", "masks") + tuple(f"backbone.p{i + 2}" for i in range(len(FEATURE_NAMES)))


class DetrExport(nn.Module):
    """Returns the named tensors of a DETR's output dict (by default DETR_OUTPUTS), in that order, for tracing."""

    def __init__(self, model: nn.Module, names: Sequence[str] = DETR_OUTPUTS):
        super().__init__()
        self.model = model
        self.names = tuple(names)
        # torch.onnx.export restores the wrapper's training flag afterwards, recursively: keep it in eval mode.
        self.eval()

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        out = self.model(images)
        return tuple(out[n] for n in self.names)


class MaskRcnnExport(nn.Module):
    """Runs Mask-RCNN on one already-normalised image of the configured size, skipping torchvision's
    resize/normalise transform (an identity here) and returning the pyramid features too."""

    def __init__(self, model: MaskRCNN):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        image_list = ImageList(images, [size])
        features = self.model.backbone(images)
        proposals, _ = self.model.rpn(image_list, features)
        detections, _ = self.model.roi_heads(features, proposals, image_list.image_sizes)
        detections = self.model.transform.postprocess(detections, image_list.image_sizes, [size])
        d = detections[0]
        return (d["boxes"], d["labels"], d["scores"], d["masks"]) + tuple(features[n] for n in FEATURE_NAMES)


def export_detr(model: DETR, example: Tensor, path: str) -> onnx.ModelProto:
    model.eval()
    _require_single(example)
    return _export(DetrExport(model), example, path, DETR_OUTPUTS, {})


def export_maskrcnn(model: MaskRCNN, example: Tensor, path: str) -> onnx.ModelProto:
    model.eval()
    _require_single(example)
    dynamic = {name: {0: "detections"} for name in MASKRCNN_OUTPUTS[:4]}
    return _export(MaskRcnnExport(model), example, path, MASKRCNN_OUTPUTS, dynamic)


def _require_single(example: Tensor) -> None:
    if example.dim() != 4 or example.shape[0] != 1:
        raise ValueError(f"exports take one image [1, 3, H, W] per run; got an example of shape {tuple(example.shape)}")


def _export(module: nn.Module, example: Tensor, path: str, output_names: Sequence[str],
            dynamic_axes: Dict[str, Dict[int, str]]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    # nn.MultiheadAttention (torchvision's ViT) takes a fused fast path without an ONNX symbolic when gradients are
    # off; tracing with gradients on keeps its decomposed ops. Other models export without gradients.
    uses_mha = any(isinstance(m, nn.MultiheadAttention) for m in module.modules())
    with torch.set_grad_enabled(uses_mha):
        torch.onnx.export(module, (example,), buffer, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    fix_roi_align(proto)
    onnx.checker.check_model(proto)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return proto


def fix_roi_align(proto: onnx.ModelProto) -> int:
    """torchvision 0.14 emits RoiAlign without coordinate_transformation_mode; from opset 16 ONNX defaults it to
    half_pixel, while torchvision's aligned=False pooling is output_half_pixel. Sets it on every RoiAlign (also in
    subgraphs) and returns how many were changed."""
    changed = 0
    for node in _all_nodes(proto.graph):
        if node.op_type != "RoiAlign":
            continue
        for attr in list(node.attribute):
            if attr.name == "coordinate_transformation_mode":
                node.attribute.remove(attr)
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "output_half_pixel"))
        changed += 1
    return changed


def _all_nodes(graph: onnx.GraphProto) -> List[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    nodes.extend(_all_nodes(g))
    return nodes


def write_reference(module_outputs: Sequence[Tensor], names: Sequence[str], example: Tensor, path: str) -> None:
    """Saves the input and PyTorch's outputs (same names as the graph's) so a runtime can check the exported graph
    numerically: <model>.reference.npz with `images` and one array per output."""
    arrays = {INPUT_NAME: example.numpy()}
    for name, value in zip(names, module_outputs):
        arrays[name] = value.detach().numpy()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write_npz(f, arrays)
    os.replace(tmp, path)


@torch.no_grad()
def reference_outputs(model: nn.Module, example: Tensor) -> Tuple[Tensor, ...]:
    if isinstance(model, DETR):
        return DetrExport(model)(example)
    if isinstance(model, MaskRCNN):
        return MaskRcnnExport(model)(example)
    raise TypeError(f"no export wrapper for {type(model).__name__}")
