"""Exports small networks written the way other training code writes its layers, for checking that the compiler takes
each form (seeded random weights; BatchNorm statistics set on random data, so activations keep their scale as in a
trained network):

- yolo: a YOLOv5-shaped detector (Conv + BatchNorm + SiLU, C3 blocks with Concat, SPPF's chained MaxPool, nearest
  Resize, depthwise and grouped dilated convolutions, box heads reshaped, permuted and passed through Sigmoid), at
  opset 12 with a fixed batch and at opset 17 with a symbolic one;
- yolov8: a YOLOv8-shaped anchor-free detector (C2f blocks with Split, decoupled heads, the DFL's softmax and fixed
  0..15 convolution, distances to boxes around grid anchors) at opset 17;
- hfvit: a ViT written as some transformer libraries write it (LayerNorm as ReduceMean / Sub / Pow / Sqrt / Div,
  GELU through Erf, attention as MatMul / Div / Softmax on permuted heads) at opset 11, and the same with the
  attention products written with einsum at opset 13 with a symbolic batch;
- audio: 1-D convolutions, a 1-D transposed convolution and a GRU over a sequence (opset 13);
- mhadetr: a DETR written with torch.nn.Transformer (its MultiheadAttention export: packed in-projection, Gemm and
  MatMul forms) at opsets 13 and 17;
- libdetr: a DETR as transformer libraries write it (separate projections, batched products over batch x heads, the
  queries repeated to the batch and a zeros_like target) at opset 17 with a symbolic batch;
- twostage_detr: an RT-DETR-shaped detector whose decoder queries are the encoder's top-scoring positions (TopK and
  GatherElements) with deformable cross-attention (GridSample) (opset 16);
- weightleft: a MatMul with the weight as its first operand and one Linear weight applied twice (opset 13);
- unfolded: layers as an export without constant folding leaves them (opset 13): a frozen batch normalization
  (torchvision's, as DETR's and torchvision's detection backbones use) whose scale and shift are computed in the graph
  and applied by Mul and Add, a weight-normalized convolution (its weight g v / ||v|| computed in the graph),
  BatchNormalization nodes after a Conv, a ConvTranspose and a Linear, and a Linear written with einsum;
- tfstyle: a graph as TensorFlow converters write it (built with onnx.helper): an NHWC input transposed to NCHW,
  explicit Pad nodes and auto_pad SAME_UPPER convolutions, Clip(0, 6) activations, a depthwise convolution,
  a MatMul whose weight has a leading 1 ([1, K, N]) and a Gemm with transA over the transposed features (opset 13).

    /usr/bin/python3 models/export_forms.py [--out DIR] [--calib 24] [--eval 8] [--only NAME ...]

Writes NAME.onnx for each form, calib128.npz / eval128.npz (input "images", 3x128x128), calib64.npz / eval64.npz
(3x64x64, for the audio net) and calib_nhwc.npz / eval_nhwc.npz (input "input", 128x128x3, for tfstyle).
"""
import argparse
import math
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class ConvBnSiLU(nn.Module):
    def __init__(self, ci, co, k=3, stride=1, groups=1, dilation=1, padding=None):
        super().__init__()
        pad = dilation * (k // 2) if padding is None else padding
        self.conv = nn.Conv2d(ci, co, k, stride, pad, groups=groups, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(co)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class C3(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvBnSiLU(c, c // 2, 1), ConvBnSiLU(c, c // 2, 1)
        self.m = nn.Sequential(ConvBnSiLU(c // 2, c // 2, 1), ConvBnSiLU(c // 2, c // 2, 3))
        self.out = ConvBnSiLU(c, c, 1)

    def forward(self, x):
        a = self.a(x)
        return self.out(torch.cat([a + self.m(a), self.b(x)], 1))


class SPPF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.out, self.pool = ConvBnSiLU(c, c // 2, 1), ConvBnSiLU(c * 2, c, 1), nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.a(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.out(torch.cat([x, y1, y2, self.pool(y2)], 1))


class Yolo(nn.Module):
    def __init__(self, classes=4, anchors=3):
        super().__init__()
        self.stem = ConvBnSiLU(3, 16, 6, 2, padding=2)
        self.down1, self.c1 = ConvBnSiLU(16, 32, 3, 2), C3(32)
        self.down2, self.c2 = ConvBnSiLU(32, 64, 3, 2), C3(64)
        self.depthwise, self.grouped = ConvBnSiLU(64, 64, 3, groups=64), ConvBnSiLU(64, 64, 3, groups=4, dilation=2)
        self.down3, self.c3, self.sppf = ConvBnSiLU(64, 128, 3, 2), C3(128), SPPF(128)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral, self.c4, self.lateral2 = ConvBnSiLU(128, 64, 1), C3(128), ConvBnSiLU(128, 64, 1)
        self.outputs = 5 + classes
        self.anchors = anchors
        self.head1 = nn.Conv2d(128, anchors * self.outputs, 1)
        self.head2 = nn.Conv2d(128, anchors * self.outputs, 1)

    def forward(self, x):
        x = self.c1(self.down1(self.stem(x)))
        p3 = self.grouped(self.depthwise(self.c2(self.down2(x))))
        p4 = self.sppf(self.c3(self.down3(p3)))
        fine = self.c4(torch.cat([self.up(self.lateral(p4)), p3], 1))
        coarse = torch.cat([self.lateral2(p4), p4[:, :64]], 1)
        boxes = []
        for head, f in ((self.head1, fine), (self.head2, coarse)):
            y = head(f)
            b, _, h, w = y.shape
            y = y.view(b, self.anchors, self.outputs, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            boxes.append(y.reshape(b, -1, self.outputs))
        return torch.cat(boxes, 1)


class DecomposedLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        u = x.mean(-1, keepdim=True)
        v = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(v + 1e-12) + self.bias


class LibraryBlock(nn.Module):
    def __init__(self, d, heads, einsum):
        super().__init__()
        self.heads, self.einsum = heads, einsum
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm1, self.norm2 = DecomposedLayerNorm(d), DecomposedLayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads

        def split(y):
            return y.view(b, t, self.heads, hd).permute(0, 2, 1, 3)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.einsum:
            a = (torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd)).softmax(-1)
            c = torch.einsum("bhqk,bhkd->bhqd", a, v)
        else:
            a = (torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1)
            c = torch.matmul(a, v)
        x = self.norm1(x + self.o(c.permute(0, 2, 1, 3).reshape(b, t, d)))
        f = self.fc1(x)
        f = 0.5 * f * (1 + torch.erf(f / math.sqrt(2)))
        return self.norm2(x + self.fc2(f))


class C2f(nn.Module):
    """YOLOv8's block: a 1x1 convolution split in two halves (Split), a chain of bottlenecks on the second, every
    intermediate concatenated."""

    def __init__(self, c, n=1):
        super().__init__()
        self.cv1 = ConvBnSiLU(c, c, 1)
        self.m = nn.ModuleList(nn.Sequential(ConvBnSiLU(c // 2, c // 2, 3), ConvBnSiLU(c // 2, c // 2, 3)) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * (c // 2), c, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloV8(nn.Module):
    """A YOLOv8-shaped anchor-free detector: C2f blocks, decoupled box and class heads at strides 16 and 32, the box
    distribution decoded by a softmax and a fixed 1x1 convolution of weights 0..15 (DFL), distances to boxes around
    the grid anchors, scaled by the strides, concatenated with the class sigmoids into one output."""

    def __init__(self, classes=4, reg=16):
        super().__init__()
        self.backbone = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2), C2f(32), ConvBnSiLU(32, 64, 3, 2), C2f(64))
        self.p4 = nn.Sequential(ConvBnSiLU(64, 96, 3, 2), C2f(96))
        self.classes, self.reg = classes, reg
        self.box = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), ConvBnSiLU(32, 32, 3), nn.Conv2d(32, 4 * reg, 1)) for c in (64, 96))
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, 32, 3), ConvBnSiLU(32, 32, 3), nn.Conv2d(32, classes, 1)) for c in (64, 96))
        self.dfl = nn.Conv2d(reg, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg, dtype=torch.float32).view(1, reg, 1, 1)

    def forward(self, x):
        f3 = self.backbone(x)
        f4 = self.p4(f3)
        outs, anchors, strides = [], [], []
        for i, (f, stride) in enumerate(((f3, 16), (f4, 32))):
            outs.append(torch.cat([self.box[i](f), self.cls[i](f)], 1))
            h, w = f.shape[2:]
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
            anchors.append(torch.stack((xs, ys), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(stride)))
        anchors, strides = torch.cat(anchors).transpose(0, 1)[None], torch.cat(strides).transpose(0, 1)
        joined = torch.cat([o.view(o.shape[0], 4 * self.reg + self.classes, -1) for o in outs], 2)
        box, cls = joined.split((4 * self.reg, self.classes), 1)
        n, _, a = box.shape
        distances = self.dfl(box.view(n, 4, self.reg, a).transpose(2, 1).softmax(1)).view(n, 4, a)
        lt, rb = distances.chunk(2, 1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        return torch.cat((torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides, cls.sigmoid()), 1)


class LibraryViT(nn.Module):
    def __init__(self, einsum=False, d=96, depth=3, heads=4, tokens=64):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 16, 16)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        self.blocks = nn.Sequential(*[LibraryBlock(d, heads, einsum) for _ in range(depth)])
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.blocks(x).mean(1))


class Audio(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(3, 32, 7, 2, 3), nn.Conv1d(32, 64, 5, 2, 2)
        self.up = nn.ConvTranspose1d(64, 32, 4, 2, 1)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        x = x.mean(2)  # N, 3, W: the image's columns as a 3-channel sequence
        x = torch.relu(self.up(torch.relu(self.c2(torch.relu(self.c1(x))))))
        y, _ = self.gru(x.transpose(1, 2))
        return self.out(y)


class TransformerDetr(nn.Module):
    def __init__(self, d=128, queries=10, classes=5):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(64, d, 3, 2, 1), nn.ReLU(), nn.Conv2d(d, d, 3, 2, 1))
        self.transformer = nn.Transformer(d, 4, 2, 2, 256, 0.0)
        self.queries = nn.Parameter(torch.randn(queries, 1, d))
        self.cls = nn.Linear(d, classes)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, x):
        f = self.backbone(x).flatten(2).permute(2, 0, 1)
        h = self.transformer(f, self.queries.expand(-1, x.shape[0], -1))
        return self.cls(h), self.box(h).sigmoid()


class LibraryAttention(nn.Module):
    """Attention as transformer libraries write DETR's: separate query, key and value projections, the position added
    to queries and keys, scaled queries, and batched products over (batch x heads, tokens, head width)."""

    def __init__(self, d, heads):
        super().__init__()
        self.h, self.hd = heads, d // heads
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def split(self, t, b):
        return t.view(b, -1, self.h, self.hd).transpose(1, 2).reshape(b * self.h, -1, self.hd)

    def forward(self, x, pos, kv=None, kv_pos=None):
        b, n, d = x.shape
        kv = x if kv is None else kv
        kv_pos = pos if kv_pos is None else kv_pos
        q = self.split(self.q(x + pos) * self.hd ** -0.5, b)
        k, v = self.split(self.k(kv + kv_pos), b), self.split(self.v(kv), b)
        w = torch.bmm(q, k.transpose(1, 2)).softmax(-1)
        return self.o(torch.bmm(w, v).view(b, self.h, n, self.hd).transpose(1, 2).reshape(b, n, d))


class LibraryDetr(nn.Module):
    """A DETR as transformer libraries write it: the learned queries repeated to the batch and a zero target
    (zeros_like), post-norm decoder layers of the attention above, class and box heads."""

    def __init__(self, d=64, queries=20, classes=5):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(64, 96, 3, 2, 1), nn.ReLU(), nn.Conv2d(96, 96, 3, 2, 1))
        self.proj = nn.Conv2d(96, d, 1)
        self.pos = nn.Parameter(torch.randn(1, 64, d) * 0.1)
        self.encoder = LibraryAttention(d, 4)
        self.enc_norm = nn.LayerNorm(d)
        self.query = nn.Embedding(queries, d)
        self.self_attn = nn.ModuleList(LibraryAttention(d, 4) for _ in range(2))
        self.cross_attn = nn.ModuleList(LibraryAttention(d, 4) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(6))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)) for _ in range(2))
        self.cls = nn.Linear(d, classes + 1)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, x):
        memory = self.proj(self.backbone(x)).flatten(2).transpose(1, 2)
        memory = self.enc_norm(memory + self.encoder(memory, self.pos))
        query_pos = self.query.weight.unsqueeze(0).repeat(x.shape[0], 1, 1)
        h = torch.zeros_like(query_pos)
        for i in range(2):
            h = self.norms[3 * i](h + self.self_attn[i](h, query_pos))
            h = self.norms[3 * i + 1](h + self.cross_attn[i](h, query_pos, memory, self.pos))
            h = self.norms[3 * i + 2](h + self.ffn[i](h))
        return self.cls(h), self.box(h).sigmoid()


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention as Deformable DETR and RT-DETR write it: each query samples a few points per
    head and level around its reference box (offsets and weights are Linear layers over the query), bilinearly with
    grid_sample (GridSample at opset 16), and mixes them by a softmax over levels and points."""

    def __init__(self, d, heads, levels, points):
        super().__init__()
        self.d, self.h, self.l, self.p = d, heads, levels, points
        self.offsets = nn.Linear(d, heads * levels * points * 2)
        self.weights = nn.Linear(d, heads * levels * points)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        with torch.no_grad():
            self.offsets.weight.mul_(0.1)

    def forward(self, q, ref, memory, shapes):
        n, nq, _ = q.shape
        hd = self.d // self.h
        v = self.value(memory)
        offsets = self.offsets(q).view(n, nq, self.h, self.l, self.p, 2)
        weights = self.weights(q).view(n, nq, self.h, self.l * self.p).softmax(-1)
        grids = 2 * (ref[:, :, None, None, None, :2] + offsets / self.p * ref[:, :, None, None, None, 2:] * 0.5) - 1
        sampled, start = [], 0
        for level, (height, width) in enumerate(shapes):
            value = v[:, start:start + height * width].transpose(1, 2).reshape(n * self.h, hd, height, width)
            start += height * width
            grid = grids[:, :, :, level].transpose(1, 2).reshape(n * self.h, nq, self.p, 2)
            sampled.append(nn.functional.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        sampled = torch.stack(sampled, -2).flatten(-2)  # N*h, hd, Q, L*P
        mixed = (sampled * weights.transpose(1, 2).reshape(n * self.h, 1, nq, self.l * self.p)).sum(-1)
        return self.out(mixed.view(n, self.h * hd, nq).transpose(1, 2))


def inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class TwoStageDetr(nn.Module):
    """An RT-DETR-shaped two-stage detector: a conv backbone at strides 8 and 16, an attention layer over the coarse
    level, a fused pyramid, then the decoder's queries chosen from the data: the encoder positions with the top class
    scores (TopK, then GatherElements of their features and anchor boxes), refined by two decoder layers of
    self-attention and deformable cross-attention."""

    def __init__(self, d=64, queries=30, classes=5, heads=4, points=4):
        super().__init__()
        self.stem = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2), ConvBnSiLU(32, 48, 3, 2))
        self.c4 = ConvBnSiLU(48, 96, 3, 2)
        self.proj3, self.proj4 = nn.Conv2d(48, d, 1), nn.Conv2d(96, d, 1)
        self.encoder = nn.TransformerEncoderLayer(d, heads, 2 * d, 0.0, batch_first=True)
        self.fuse = ConvBnSiLU(2 * d, d, 3)
        self.enc_score = nn.Linear(d, classes)
        self.enc_box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))
        self.queries = queries
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            self_attn=nn.MultiheadAttention(d, heads, batch_first=True), n1=nn.LayerNorm(d),
            cross=DeformableAttention(d, heads, 2, points), n2=nn.LayerNorm(d),
            ffn=nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)), n3=nn.LayerNorm(d),
            pos=nn.Sequential(nn.Linear(4, d), nn.ReLU(), nn.Linear(d, d)),
            box=nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4)), cls=nn.Linear(d, classes))) for _ in range(2))

    def forward(self, x):
        f3 = self.stem(x)
        p3, p4 = self.proj3(f3), self.proj4(self.c4(f3))
        n, d, h4, w4 = p4.shape
        p4 = self.encoder(p4.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, d, h4, w4)
        p3 = self.fuse(torch.cat([p3, nn.functional.interpolate(p4, scale_factor=2.0, mode="nearest")], 1))
        shapes = [(p3.shape[2], p3.shape[3]), (h4, w4)]
        memory = torch.cat([p3.flatten(2), p4.flatten(2)], 2).transpose(1, 2)
        anchors = []
        for level, (height, width) in enumerate(shapes):
            ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
            centres = torch.stack([(xs + 0.5) / width, (ys + 0.5) / height], -1).reshape(-1, 2)
            anchors.append(torch.cat([centres, torch.full_like(centres, 0.05 * 2 ** level)], -1))
        anchors = inverse_sigmoid(torch.cat(anchors, 0))[None].expand(n, -1, -1)
        chosen = self.enc_score(memory).max(-1).values.topk(self.queries, dim=1).indices
        target = memory.gather(1, chosen[..., None].expand(-1, -1, d))
        ref = (self.enc_box(target) + anchors.gather(1, chosen[..., None].expand(-1, -1, 4))).sigmoid()
        logits = None
        for layer in self.layers:
            pos = layer["pos"](ref)
            q = target + pos
            target = layer["n1"](target + layer["self_attn"](q, q, target, need_weights=False)[0])
            target = layer["n2"](target + layer["cross"](target + pos, ref, memory, shapes))
            target = layer["n3"](target + layer["ffn"](target))
            ref = (layer["box"](target) + inverse_sigmoid(ref)).sigmoid()
            logits = layer["cls"](target)
        return logits, ref


class WeightLeft(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.mix = nn.Parameter(torch.randn(32, 64 * 64) * 0.01)
        self.shared = nn.Linear(16, 16, bias=False)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).flatten(2)            # N, 16, 4096
        z = torch.matmul(self.mix, y.transpose(1, 2))      # N, 32, 16: the weight on the left
        z = nn.functional.linear(self.shared(z), self.shared.weight)
        return self.out(z.transpose(1, 2))


class Unfolded(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.ops.misc import FrozenBatchNorm2d
        self.stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.frozen = FrozenBatchNorm2d(16)
        self.conv = nn.utils.weight_norm(nn.Conv2d(16, 32, 3, 2, 1))
        self.bn = nn.BatchNorm2d(32)
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.up_bn = nn.BatchNorm2d(16)
        self.proj = nn.Parameter(torch.randn(16, 24) / 4)
        self.fc = nn.Linear(24, 32)
        self.fc_bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.frozen.weight.uniform_(0.5, 1.5)
            self.frozen.bias.uniform_(-0.3, 0.3)
            self.frozen.running_mean.uniform_(-0.3, 0.3)
            self.frozen.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = torch.relu(self.frozen(self.stem(x)))
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.up_bn(self.up(x)))                        # N, 16, 64, 64
        t = torch.einsum("bnc,cd->bnd", x.flatten(2).transpose(1, 2), self.proj)
        p = torch.relu(t).mean(1)                                      # N, 24
        return self.head(torch.relu(self.fc_bn(self.fc(p))))


# name: (builder, opset, symbolic batch, image size)
FORMS = {
    "yolo_op12": (Yolo, 12, False, 128),
    "yolo_op17_dynamic": (Yolo, 17, True, 128),
    "yolov8_op17": (YoloV8, 17, False, 128),
    "hfvit_op11": (lambda: LibraryViT(einsum=False), 11, False, 128),
    "hfvit_einsum_op13_dynamic": (lambda: LibraryViT(einsum=True), 13, True, 128),
    "audio_conv1d_gru_op13": (Audio, 13, False, 64),
    "mhadetr_op13": (TransformerDetr, 13, False, 128),
    "mhadetr_op17_dynamic": (TransformerDetr, 17, True, 128),
    "libdetr_op17_dynamic": (LibraryDetr, 17, True, 128),
    "twostage_detr_op16": (TwoStageDetr, 16, False, 128),
    "weightleft_op13": (WeightLeft, 13, False, 128),
    "unfolded_op13": (Unfolded, 13, False, 128),
    "tfstyle_nhwc_op13": (None, 13, True, 128),  # built by tf_style(): input "input", N x 128 x 128 x 3
}
# Exported without constant folding: the graph computes what a folding exporter would store.
UNFOLDED = {"unfolded_op13"}


def tf_style(path, size=128, seed=0):
    """An NHWC classifier head on a small conv stack, in the forms TensorFlow converters write."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [
        weight("conv1/w", (16, 3, 3, 3), 27), numpy_helper.from_array(np.full(16, 0.1, np.float32), "conv1/b"),
        weight("dw/w", (16, 1, 3, 3), 9), numpy_helper.from_array(np.zeros(16, np.float32), "dw/b"),
        weight("pw/w", (32, 16, 1, 1), 16), numpy_helper.from_array(np.zeros(32, np.float32), "pw/b"),
        weight("conv2/w", (32, 32, 3, 3), 288),
        weight("fc/w", (1, 32, 24), 32), numpy_helper.from_array((0.1 * rng.standard_normal(24)).astype(np.float32), "fc/b"),
        weight("cls/w", (10, 24), 24),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(6, np.float32), "six"),
        numpy_helper.from_array(np.array([0, 32, -1], np.int64), "tokens"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Pad", ["nchw", "pads"], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "conv1/w", "conv1/b"], ["c1"], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["a1"]),
        helper.make_node("Conv", ["a1", "dw/w", "dw/b"], ["d1"], group=16, auto_pad="SAME_UPPER"),
        helper.make_node("Clip", ["d1", "zero", "six"], ["a2"]),
        helper.make_node("Conv", ["a2", "pw/w", "pw/b"], ["p1"]),
        helper.make_node("Relu", ["p1"], ["a3"]),
        helper.make_node("Conv", ["a3", "conv2/w"], ["c2"], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["a4"]),
        helper.make_node("Reshape", ["a4", "tokens"], ["t"]),               # N, 32, HW
        helper.make_node("Transpose", ["t"], ["tokens_nlc"], perm=[0, 2, 1]),  # N, HW, 32
        helper.make_node("MatMul", ["tokens_nlc", "fc/w"], ["f"]),
        helper.make_node("Add", ["f", "fc/b"], ["fb"]),
        helper.make_node("Relu", ["fb"], ["fr"]),
        helper.make_node("ReduceMean", ["fr"], ["pooled"], axes=[1], keepdims=0),  # N, 24
        helper.make_node("Transpose", ["pooled"], ["pooled_t"], perm=[1, 0]),
        helper.make_node("Gemm", ["pooled_t", "cls/w"], ["logits"], transA=1, transB=1),
    ]
    graph = helper.make_graph(nodes, "tfstyle", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx-style")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)


def settle_batchnorm(model, size, seed):
    """Running statistics from random data and affine parameters away from identity, so that activations keep their
    scale through the depth as in a trained network (with fresh statistics a random SiLU stack decays to its biases)."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not norms:
        return
    generator = torch.Generator().manual_seed(seed)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, size, size, generator=generator))
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.uniform_(-0.5, 0.5, generator=generator)


def export(name, out, seed=0):
    if name == "tfstyle_nhwc_op13":
        path = os.path.join(out, f"{name}.onnx")
        tf_style(path, seed=seed)
        return path
    builder, opset, dynamic, size = FORMS[name]
    torch.manual_seed(seed)
    model = builder()
    settle_batchnorm(model, size, seed)
    model.eval()
    axes = {"images": {0: "batch"}} if dynamic else None
    path = os.path.join(out, f"{name}.onnx")
    torch.onnx.export(model, torch.randn(1, 3, size, size), path, opset_version=opset, input_names=["images"],
                      do_constant_folding=name not in UNFOLDED, dynamic_axes=axes)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "forms"))
    parser.add_argument("--calib", type=int, default=24, help="calibration samples")
    parser.add_argument("--eval", type=int, default=8, help="held-out samples")
    parser.add_argument("--only", nargs="*", choices=sorted(FORMS), help="export only these forms")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.only or FORMS:
        print("wrote", export(name, args.out))
    rng = np.random.default_rng(0)
    for size in (128, 64):
        for prefix, count in (("calib", args.calib), ("eval", args.eval)):
            data = rng.standard_normal((count, 3, size, size)).astype(np.float32)
            np.savez(os.path.join(args.out, f"{prefix}{size}.npz"), images=data)
    for prefix, count in (("calib", args.calib), ("eval", args.eval)):
        data = rng.uniform(0, 1, (count, 128, 128, 3)).astype(np.float32)
        np.savez(os.path.join(args.out, f"{prefix}_nhwc.npz"), input=data)


if __name__ == "__main__":
    main()
