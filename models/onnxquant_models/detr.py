"""DETR: ResNet backbone, 1x1 input projection, sine positional encoding, transformer encoder/decoder, object queries,
class and box heads; Hungarian matcher and set criterion.

Two decoder flavours share one module:
  * plain DETR (``box_refine=False``): learned query embeddings are the query positions, one shared class head and
    one shared 3-layer box MLP applied to every decoder layer's output (boxes = sigmoid(MLP(h))).
  * box refinement (``box_refine=True``), a convergence aid for CPU training: each query owns a learned reference box;
    the query position of every decoder layer is an MLP of the sine embedding of the current reference box, and each
    layer predicts a delta in logit space that refines it (boxes_l = sigmoid(delta_l + logit(ref_{l-1}))). Per-layer
    heads. Both flavours add positional embeddings to keys and query embeddings to queries in every attention layer.

Forward output (a dict):
  pred_logits      [B, Q, num_classes + 1]  last index is "no object"; softmax over the last axis
  pred_boxes       [B, Q, 4]                (cx, cy, w, h) normalised to [0, 1] by the input width/height
  aux_outputs      list of {"pred_logits", "pred_boxes", "decoder_features"} for decoder layers 0..L-2
  decoder_features [B, Q, d_model]          last decoder layer output after its norm (the co-attention features)
  backbone_feature [B, C, H/s, W/s]         last ResNet stage output, before the 1x1 input projection
Class index i < num_classes is dataset category id i + 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# The box maths lives in .boxes (shared with the QAT bridge); imported here for the matcher, the criterion and the
# decoder, and kept importable from this module.
from .boxes import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou  # noqa: F401


# ----------------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DetrConfig:
    num_classes: int
    block: str = "bottleneck"  # "basic" (ResNet-18/34 style) or "bottleneck" (ResNet-50 style)
    stage_blocks: Tuple[int, ...] = (3, 4, 6, 3)  # blocks per stage; fewer stages means a smaller output stride
    base_width: int = 64  # channels of the stem and first stage; doubles every stage
    d_model: int = 256
    nhead: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    box_refine: bool = False

    @property
    def backbone_channels(self) -> int:
        expansion = 4 if self.block == "bottleneck" else 1
        return self.base_width * (2 ** (len(self.stage_blocks) - 1)) * expansion

    @property
    def stride(self) -> int:
        return 4 * 2 ** (len(self.stage_blocks) - 1)


def detr_r50(num_classes: int = 91) -> DetrConfig:
    """The published DETR-R50 shape: ResNet-50, d_model 256, 6+6 layers, 8 heads, FFN 2048, 100 queries."""
    return DetrConfig(num_classes=num_classes)


def detr_small(num_classes: int = 5) -> DetrConfig:
    """A CPU-trainable DETR: 3-stage ResNet (stride 16, 64 tokens at 128x128), d_model 128, 2+3 layers, 12 queries,
    reference-box refinement."""
    return DetrConfig(
        num_classes=num_classes,
        block="basic",
        stage_blocks=(1, 2, 2),
        base_width=24,
        d_model=128,
        nhead=4,
        enc_layers=2,
        dec_layers=3,
        dim_feedforward=256,
        dropout=0.0,
        num_queries=12,
        box_refine=True,
    )


def detr_tiny(num_classes: int = 5) -> DetrConfig:
    """The smallest variant, used by the tests (fast forward and export)."""
    return DetrConfig(
        num_classes=num_classes, block="basic", stage_blocks=(1, 1), base_width=8, d_model=32, nhead=2,
        enc_layers=1, dec_layers=2, dim_feedforward=64, dropout=0.0, num_queries=5, box_refine=True,
    )


# --------------------------------------------------------------------------------------------------------- backbone
class ResNetBackbone(nn.Module):
    """ResNet body (stem + stages) with configurable block type, depth per stage and width; no classifier."""

    def __init__(self, block: str, stage_blocks: Sequence[int], base_width: int):
        super().__init__()
        block_type = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.stem = nn.Sequential(
            nn.Conv2d(3, base_width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        in_ch = base_width
        for i, n in enumerate(stage_blocks):
            width = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            out_ch = width * block_type.expansion
            downsample = None
            if stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
            layers = [block_type(in_ch, width, stride, downsample)]
            layers += [block_type(out_ch, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_ch

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


def sine_position_encoding(h: int, w: int, d_model: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine encoding for an unpadded h x w grid: [h*w, d_model] (first half y, second half x)."""
    npf = d_model // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + eps) * scale
    dim_t = torch.arange(npf, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / npf)
    px = x[..., None] / dim_t
    py = y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).reshape(h * w, d_model)


def sine_frequencies(d_model: int, temperature: float = 10000.0) -> Tensor:
    npf = d_model // 2
    dim_t = torch.arange(npf, dtype=torch.float32)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / npf)


def box_sine_embedding(boxes: Tensor, frequencies: Tensor) -> Tensor:
    """Sine embedding of normalised (cx, cy, w, h) boxes: [..., 4] -> [..., 4 * len(frequencies)]
    (frequencies = sine_frequencies(d_model), so d_model/2 values per coordinate)."""
    pos = boxes[..., None] * (2 * math.pi) / frequencies  # [..., 4, npf]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))


# ------------------------------------------------------------------------------------------------------ transformer
class Attention(nn.Module):
    """Multi-head attention written out with Linear + MatMul + Softmax so it exports to plain ONNX ops and every
    projection and both matmuls are visible to quantizers."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, nq, d = q.shape
        nk = k.shape[1]
        q = self.q_proj(q).reshape(b, nq, self.nhead, self.head_dim).transpose(1, 2)
        k = self.k_proj(k).reshape(b, nk, self.nhead, self.head_dim).transpose(1, 2)
        v = self.v_proj(v).reshape(b, nk, self.nhead, self.head_dim).transpose(1, 2)
        attn = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * (self.head_dim ** -0.5), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, nq, d)
        return self.out_proj(out)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_ff: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Post-norm encoder layer; the positional encoding is added to queries and keys of its self-attention."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nhead)
        self.ffn = FeedForward(d_model, dim_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        qk = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src)))
        return self.norm2(src + self.dropout(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over queries (query position added to q and k), cross-attention to
    the encoder memory (query position added to q, memory position to k), FFN."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nhead)
        self.cross_attn = Attention(d_model, nhead)
        self.ffn = FeedForward(d_model, dim_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor) -> Tensor:
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt)))
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + query_pos, memory + pos, memory)))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# ------------------------------------------------------------------------------------------------------------- DETR
class DETR(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.backbone = ResNetBackbone(config.block, config.stage_blocks, config.base_width)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        self.encoder = nn.ModuleList(
            EncoderLayer(d, config.nhead, config.dim_feedforward, config.dropout) for _ in range(config.enc_layers))
        self.decoder = nn.ModuleList(
            DecoderLayer(d, config.nhead, config.dim_feedforward, config.dropout) for _ in range(config.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        n_heads = config.dec_layers if config.box_refine else 1
        self.class_heads = nn.ModuleList(nn.Linear(d, config.num_classes + 1) for _ in range(n_heads))
        self.box_heads = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(n_heads))
        if config.box_refine:
            self.reference_boxes = nn.Embedding(config.num_queries, 4)
            self.ref_point_head = MLP(2 * d, d, d, 2)
            # Spread the initial reference centres over the image and start every box at a moderate size, so the
            # first matches are spatially meaningful instead of all queries sitting at the centre.
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                self.reference_boxes.weight[:, :2].uniform_(-2.0, 2.0, generator=g)
                self.reference_boxes.weight[:, 2:].fill_(-1.0)
            # A buffer rather than computed per call, so the export holds a constant instead of Range/Pow ops.
            self.register_buffer("box_frequencies", sine_frequencies(d), persistent=False)
            for head in self.box_heads:
                nn.init.zeros_(head.layers[-1].weight)
                nn.init.zeros_(head.layers[-1].bias)
        else:
            self.query_embed = nn.Embedding(config.num_queries, d)
        # Background prior on the class logits (as in detection heads trained with few positives per image).
        for head in self.class_heads:
            nn.init.zeros_(head.bias)
        self._pos_cache: Dict[Tuple[int, int], Tensor] = {}

    def position_encoding(self, h: int, w: int, device: torch.device) -> Tensor:
        # Cached per grid size: under ONNX tracing it becomes a constant initializer rather than a chain of shape ops.
        key = (h, w)
        if key not in self._pos_cache:
            self._pos_cache[key] = sine_position_encoding(h, w, self.config.d_model)
        return self._pos_cache[key].to(device)

    def forward(self, images: Tensor) -> Dict[str, object]:
        feature = self.backbone(images)
        src = self.input_proj(feature)
        b, d, h, w = src.shape
        memory = src.flatten(2).transpose(1, 2)  # [B, HW, d]
        pos = self.position_encoding(h, w, images.device)[None]
        for layer in self.encoder:
            memory = layer(memory, pos)

        q = self.config.num_queries
        tgt = torch.zeros(b, q, d, device=images.device, dtype=memory.dtype)
        layer_logits: List[Tensor] = []
        layer_boxes: List[Tensor] = []
        layer_features: List[Tensor] = []
        if self.config.box_refine:
            ref = self.reference_boxes.weight.sigmoid()[None].expand(b, q, 4)
            for i, layer in enumerate(self.decoder):
                query_pos = self.ref_point_head(box_sine_embedding(ref, self.box_frequencies))
                tgt = layer(tgt, memory, query_pos, pos)
                hs = self.decoder_norm(tgt)
                boxes = (self.box_heads[i](hs) + inverse_sigmoid(ref)).sigmoid()
                layer_logits.append(self.class_heads[i](hs))
                layer_boxes.append(boxes)
                layer_features.append(hs)
                ref = boxes.detach()
        else:
            query_pos = self.query_embed.weight[None].expand(b, q, d)
            for layer in self.decoder:
                tgt = layer(tgt, memory, query_pos, pos)
                hs = self.decoder_norm(tgt)
                layer_logits.append(self.class_heads[0](hs))
                layer_boxes.append(self.box_heads[0](hs).sigmoid())
                layer_features.append(hs)

        aux = [
            {"pred_logits": lg, "pred_boxes": bx, "decoder_features": ft}
            for lg, bx, ft in zip(layer_logits[:-1], layer_boxes[:-1], layer_features[:-1])
        ]
        return {
            "pred_logits": layer_logits[-1],
            "pred_boxes": layer_boxes[-1],
            "aux_outputs": aux,
            "decoder_features": layer_features[-1],
            "backbone_feature": feature,
        }


def build_detr(config: DetrConfig) -> DETR:
    return DETR(config)


# ---------------------------------------------------------------------------------------------- matcher, criterion
@dataclass(frozen=True)
class MatchWeights:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0


class HungarianMatcher:
    """One-to-one assignment of predictions to targets minimising
    w_cls * (-p(target class)) + w_l1 * L1(cxcywh) + w_giou * (-GIoU)   (scipy linear_sum_assignment)."""

    def __init__(self, weights: MatchWeights = MatchWeights()):
        self.weights = weights

    @torch.no_grad()
    def __call__(self, pred_logits: Tensor, pred_boxes: Tensor, targets: Sequence[Dict[str, Tensor]]
                 ) -> List[Tuple[Tensor, Tensor]]:
        """targets[i]: {"labels": int64 [N] class index (0-based), "boxes": [N, 4] cxcywh normalised}.
        Returns per image (prediction indices, target indices), both int64, sorted by prediction index."""
        prob = pred_logits.softmax(-1)
        result = []
        for i, t in enumerate(targets):
            if t["labels"].numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                result.append((empty, empty))
                continue
            cost = (-self.weights.cls * prob[i][:, t["labels"]]
                    + self.weights.l1 * torch.cdist(pred_boxes[i], t["boxes"], p=1)
                    - self.weights.giou * generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes[i]),
                                                              box_cxcywh_to_xyxy(t["boxes"])))
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result


@dataclass(frozen=True)
class LossWeights:
    cls: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    no_object: float = 0.1  # relative weight of the "no object" class in the cross-entropy


class SetCriterion(nn.Module):
    """DETR's loss: Hungarian matching, then cross-entropy over all queries (no-object down-weighted), L1 and
    GIoU on matched boxes normalised by the number of target boxes; repeated for every auxiliary decoder output."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None,
                 weights: LossWeights = LossWeights()):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weights = weights
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = weights.no_object
        self.register_buffer("empty_weight", empty_weight)

    def single(self, logits: Tensor, boxes: Tensor, targets: Sequence[Dict[str, Tensor]], num_boxes: float
               ) -> Dict[str, Tensor]:
        indices = self.matcher(logits, boxes, targets)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        src_boxes = boxes[batch_idx, src_idx]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        loss_l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_l1, "loss_giou": loss_giou}

    def forward(self, outputs: Dict[str, object], targets: Sequence[Dict[str, Tensor]]) -> Tuple[Tensor, Dict[str, float]]:
        """Returns (weighted total loss, per-term values of the final layer for logging)."""
        num_boxes = max(float(sum(t["labels"].numel() for t in targets)), 1.0)
        layers = [outputs] + list(outputs.get("aux_outputs", []))
        total = torch.zeros((), device=outputs["pred_logits"].device)
        logged: Dict[str, float] = {}
        for k, out in enumerate(layers):
            terms = self.single(out["pred_logits"], out["pred_boxes"], targets, num_boxes)
            total = total + (self.weights.cls * terms["loss_ce"] + self.weights.l1 * terms["loss_bbox"]
                             + self.weights.giou * terms["loss_giou"])
            if k == 0:
                logged = {name: float(v.detach()) for name, v in terms.items()}
        return total, logged


# ------------------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Detection:
    box_xyxy: Tuple[float, float, float, float]  # pixels
    category_id: int
    score: float


def decode_detr(pred_logits: Tensor, pred_boxes: Tensor, width: int, height: int) -> List[List[Detection]]:
    """Per image, every query as a detection: score = max softmax probability over the real classes (no-object
    excluded), category id = argmax + 1, box converted from normalised cxcywh to pixel xyxy."""
    prob = pred_logits.softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    boxes = box_cxcywh_to_xyxy(pred_boxes) * torch.tensor([width, height, width, height], dtype=pred_boxes.dtype)
    out = []
    for i in range(pred_logits.shape[0]):
        dets = [Detection(tuple(float(v) for v in boxes[i, j]), int(labels[i, j]) + 1, float(scores[i, j]))
                for j in range(pred_logits.shape[1])]
        out.append(sorted(dets, key=lambda d: -d.score))
    return out
