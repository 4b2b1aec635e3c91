"""Quantized drop-in replacements for nn.Linear, nn.Conv2d and nn.MultiheadAttention, and distribution alignment.

Each replacement shares the original module's parameters, fake-quantizes its input activation per tensor and its
weight per output channel. The attention replacement also quantizes q, k, v and the softmax output at the attention
bits, and can align the query distribution around the query's input quantizer (Q-DETR's DA).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .lsq import LsqQuantizer, WeightDequant


class AutoSignQuantizer(LsqQuantizer):
    """Activation quantizer that picks signed or unsigned from the first data (or calibrated range) it sees: a
    non-negative tensor (after ReLU, a softmax) gets all 2^b levels on [0, max]."""

    def __init__(self, bits: int):
        super().__init__(bits, signed=True)
        self.register_buffer("is_signed", torch.tensor(True))
        # Non-zero only for an asymmetric grid taken over from a post-training artifact (uint8 with zero point z):
        # the stored integers are q + z in [0, 2^b - 1], so q itself lies in [-z, 2^b - 1 - z].
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def _set_sign(self, signed: bool) -> None:
        self.signed = signed
        self.is_signed.fill_(signed)
        from .lsq import qrange
        self.qmin, self.qmax = qrange(self.bits, signed)
        z = int(self.zero_point)
        if z and not signed:
            self.qmin, self.qmax = self.qmin - z, self.qmax - z

    def init_from_qparams(self, scale: float, zero_point: int) -> None:
        """The exact grid of a post-training QuantizeLinear: step `scale`, unsigned b-bit storage with zero point
        `zero_point` (the step stays learnable, the zero point fixed)."""
        if not 0 <= zero_point <= 2 ** self.bits - 1:
            raise ValueError(f"zero point {zero_point} is outside the unsigned {self.bits}-bit range")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"activation scale {scale} must be finite and > 0")
        self.zero_point.fill_(zero_point)
        self._set_sign(False)
        with torch.no_grad():
            self.scale.fill_(scale)
            self.initialized.fill_(True)

    def export_zero_point(self) -> int:
        return int(self.zero_point) if not self.signed else 0

    def init_from(self, x: torch.Tensor) -> None:
        self.zero_point.fill_(0)
        self._set_sign(bool(x.detach().min() < 0))
        super().init_from(x)

    def init_from_range(self, lo: float, hi: float) -> None:
        self.zero_point.fill_(0)
        self._set_sign(lo < 0)
        super().init_from_range(lo, hi)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._set_sign(bool(self.is_signed))


class _QuantWeightMixin:
    """Shared weight handling: fake-quantized while training, integer initializer + DequantizeLinear on export."""

    def quantized_weight(self) -> torch.Tensor:
        if self.wq.export_mode:
            return WeightDequant.apply(self.w_int, self.w_scale, self.w_zero, 0)
        return self.wq(self.weight)

    def prepare_export(self) -> None:
        if not bool(self.wq.initialized):
            self.wq.init_from(self.weight)
        self.register_buffer("w_int", self.wq.integer_weight(self.weight), persistent=False)
        self.register_buffer("w_scale", self.wq.scale.detach().abs().clamp(min=1e-8).clone(), persistent=False)
        self.register_buffer("w_zero", torch.zeros(self.wq.channels, dtype=torch.int8), persistent=False)


class QuantLinear(nn.Module, _QuantWeightMixin):
    def __init__(self, base: nn.Linear, weight_bits: int, act_bits: int):
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.wq = LsqQuantizer(weight_bits, signed=True, channels=base.out_features, axis=0)
        # act_bits 0: the input stays float (a weight-only layer of a post-training artifact).
        self.aq = AutoSignQuantizer(act_bits) if act_bits else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.aq(x), self.quantized_weight(), self.bias)


class QuantConv2d(nn.Module, _QuantWeightMixin):
    def __init__(self, base: nn.Conv2d, weight_bits: int, act_bits: int):
        super().__init__()
        if base.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode '{base.padding_mode}' is not supported; only 'zeros'")
        self.weight = base.weight
        self.bias = base.bias
        self.stride, self.padding, self.dilation, self.groups = base.stride, base.padding, base.dilation, base.groups
        self.weight_bits, self.act_bits = weight_bits, act_bits
        self.wq = LsqQuantizer(weight_bits, signed=True, channels=base.out_channels, axis=0)
        # act_bits 0: the input stays float (a weight-only layer of a post-training artifact).
        self.aq = AutoSignQuantizer(act_bits) if act_bits else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.aq(x), self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class DistributionAlignment(nn.Module):
    """Q-DETR's distribution alignment of the co-attention query, in front of the query's low-bit quantizer:

        forward(x, Q) = gamma * Q((x - mu) / sqrt(sigma^2 + eps)) + beta, per channel.

    It sits on the query input of the decoder co-attention (tgt + query_pos), whose quantizer runs at the activation
    bits (4 or 2), and not on the projected query, whose quantizer runs at the attention bits: an 8-bit quantizer
    loses almost nothing, so alignment there could only add an affine map the weights learn anyway. The per-tensor
    quantizer sees the normalized query, every channel spread over the same grid instead of the widest channel
    setting the step for all; gamma and beta, applied after it, return the query to its own scale.

    mu and sigma^2 are frozen statistics (buffers), like the batch-norm statistics the trainer freezes: training and
    the exported graph compute the same thing, and a small batch does not make the normalization noisy.
    `init_from_statistics` takes them from the real-valued teacher's queries and sets gamma = sqrt(sigma^2 + eps),
    beta = mu, so without a quantizer the module is the identity; gamma and beta then learn. Before that call mu = 0,
    sigma^2 = 1 - eps, gamma = 1, beta = 0 (identity too)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.full((channels,), 1.0 - eps))

    def init_from_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.var.copy_(var)
            self.gamma.copy_(torch.sqrt(var + self.eps))
            self.beta.copy_(mean)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / torch.sqrt(self.var + self.eps)

    def forward(self, x: torch.Tensor, quantizer: Optional[nn.Module] = None) -> torch.Tensor:
        x = self.normalize(x)
        if quantizer is not None:
            x = quantizer(x)
        return x * self.gamma + self.beta


def _align_from(align: DistributionAlignment, quantizer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    align.init_from_statistics(mean, var)
    # A step calibrated (or taken from a recipe) on the raw query does not fit the normalized one: the next
    # calibration pass sets it again from what the quantizer now sees.
    if isinstance(quantizer, LsqQuantizer):
        quantizer.initialized.fill_(False)


class QuantMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with quantized projections, q/k/v and softmax output. Same call signature and outputs
    (attention output, attention weights averaged over heads or None)."""

    def __init__(self, base: nn.MultiheadAttention, weight_bits: int, act_bits: int, attention_bits: int,
                 align_query: bool = False, eps: float = 1e-5):
        super().__init__()
        if not base._qkv_same_embed_dim:
            raise ValueError("MultiheadAttention with kdim/vdim different from embed_dim is not supported")
        if base.bias_k is not None or base.add_zero_attn:
            raise ValueError("MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        e = base.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = e, base.num_heads, base.batch_first
        self.head_dim = e // base.num_heads
        self.dropout = base.dropout
        self.in_proj_weight = base.in_proj_weight
        self.in_proj_bias = base.in_proj_bias
        self.weight_bits, self.act_bits, self.attention_bits = weight_bits, act_bits, attention_bits
        self.in_wq = LsqQuantizer(weight_bits, signed=True, channels=3 * e, axis=0)
        act = (lambda: AutoSignQuantizer(act_bits)) if act_bits else nn.Identity
        self.query_aq, self.key_aq, self.value_aq = act(), act(), act()
        self.q_quant, self.k_quant, self.v_quant, self.softmax_quant = _attention_quantizers(attention_bits)
        self.align = DistributionAlignment(e, eps) if align_query else None
        self.out_proj = QuantLinear(base.out_proj, weight_bits, act_bits)

    # The weight-export helpers of _QuantWeightMixin expect these names.
    @property
    def wq(self):
        return self.in_wq

    @property
    def weight(self):
        return self.in_proj_weight

    def prepare_export(self) -> None:
        _QuantWeightMixin.prepare_export(self)

    def align_from(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """DA from the statistics of the query input (per channel over every query)."""
        _align_from(self.align, self.query_aq, mean, var)

    def forward(self, query, key, value, key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, nq, e = query.shape
        nk = key.shape[1]
        w = _QuantWeightMixin.quantized_weight(self)
        bias = self.in_proj_bias if self.in_proj_bias is not None else torch.zeros(3 * e, device=query.device)
        query = self.align(query, self.query_aq) if self.align is not None else self.query_aq(query)
        q = F.linear(query, w[:e], bias[:e])
        k = F.linear(self.key_aq(key), w[e:2 * e], bias[e:2 * e])
        v = F.linear(self.value_aq(value), w[2 * e:], bias[2 * e:])
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        h, d = self.num_heads, self.head_dim
        q = q.reshape(b, nq, h, d).transpose(1, 2) * (d ** -0.5)
        k = k.reshape(b, nk, h, d).transpose(1, 2)
        v = v.reshape(b, nk, h, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(attn_mask.reshape(-1, h, nq, nk) if attn_mask.dim() == 3 else attn_mask,
                                            float("-inf"))
            else:
                scores = scores + (attn_mask.reshape(-1, h, nq, nk) if attn_mask.dim() == 3 else attn_mask)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
        attn = self.softmax_quant(torch.softmax(scores, dim=-1))
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(b, nq, e)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(dim=1) if average_attn_weights else attn
        return out, weights


def _attention_quantizers(bits: int):
    """q, k, v and softmax-output quantizers; bits 0 keeps them float (a post-training artifact quantizes only the
    layers with weights, so a student that starts from one must not add quantizers it lacks)."""
    if bits == 0:
        return nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
    return (LsqQuantizer(bits, signed=True), LsqQuantizer(bits, signed=True), LsqQuantizer(bits, signed=True),
            LsqQuantizer(bits, signed=False))


def is_split_projection_attention(module: nn.Module) -> bool:
    """Attention written as four Linear projections (q_proj, k_proj, v_proj, out_proj) with a head count, called as
    forward(q, k, v): the form DETR implementations use to keep every matmul visible."""
    return (all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
            and isinstance(getattr(module, "nhead", getattr(module, "num_heads", None)), int))


class QuantSplitAttention(nn.Module):
    """Quantized form of a split-projection attention: projections at the layer's W/A bits; q, k, v and the
    softmax output at the attention bits; optional distribution alignment of the query input around q_proj's
    activation quantizer."""

    def __init__(self, base: nn.Module, weight_bits: int, act_bits: int, attention_bits: int,
                 align_query: bool = False, eps: float = 1e-5):
        super().__init__()
        self.nhead = int(getattr(base, "nhead", getattr(base, "num_heads", 0)))
        d = base.q_proj.out_features
        if d % self.nhead:
            raise ValueError(f"attention width {d} is not divisible by its {self.nhead} heads")
        self.head_dim = d // self.nhead
        self.weight_bits, self.act_bits, self.attention_bits = weight_bits, act_bits, attention_bits
        self.q_proj = QuantLinear(base.q_proj, weight_bits, act_bits)
        self.k_proj = QuantLinear(base.k_proj, weight_bits, act_bits)
        self.v_proj = QuantLinear(base.v_proj, weight_bits, act_bits)
        self.out_proj = QuantLinear(base.out_proj, weight_bits, act_bits)
        self.q_quant, self.k_quant, self.v_quant, self.softmax_quant = _attention_quantizers(attention_bits)
        self.align = DistributionAlignment(d, eps) if align_query else None

    def align_from(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """DA from the statistics of the query input (per channel over every query)."""
        _align_from(self.align, self.q_proj.aq, mean, var)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        nk = k.shape[1]
        if self.align is not None:
            q = F.linear(self.align(q, self.q_proj.aq), self.q_proj.quantized_weight(), self.q_proj.bias)
        else:
            q = self.q_proj(q)
        q = self.q_quant(q)
        q = q.reshape(b, nq, self.nhead, self.head_dim).transpose(1, 2)
        k = self.k_quant(self.k_proj(k)).reshape(b, nk, self.nhead, self.head_dim).transpose(1, 2)
        v = self.v_quant(self.v_proj(v)).reshape(b, nk, self.nhead, self.head_dim).transpose(1, 2)
        attn = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * (self.head_dim ** -0.5), dim=-1)
        attn = self.softmax_quant(attn)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, nq, d)
        return self.out_proj(out)
