"""LSQ fake quantization: learnable step size, straight-through rounding, gradient-scaled step updates.

x_q = s * clamp(round(x / s), qmin, qmax). The rounding passes gradients straight through; the step s gets LSQ's
gradient (x/s rounding residual inside the range, the clamp bound outside) scaled by 1 / sqrt(n * qmax) so that its
update is commensurate with the weights' updates. Weights are symmetric signed per output channel; activations are
per tensor, signed or unsigned (a non-negative input such as a softmax output uses all 2^b levels).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def qrange(bits: int, signed: bool) -> tuple:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


# Adding and subtracting 1.5 * 2^23 rounds a float32 to the nearest integer, ties to even (what torch.round and ONNX
# QuantizeLinear do), exactly for |x| < 2^22; callers clamp to the b-bit range first. Debian's torch.round is not
# vectorized and took a quarter of a training step; two additions are.
_ROUNDER = 1.5 * 2 ** 23


def fast_round(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32:
        return x.round()
    return (x + _ROUNDER) - _ROUNDER


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        rounded = fast_round(x)
    return (rounded - x).detach() + x


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return (x - x * g).detach() + x * g


MSE_SAMPLE = 1 << 16


def mse_scale(x: torch.Tensor, bits: int, signed: bool, axis: Optional[int] = None, steps: int = 20) -> torch.Tensor:
    """Step size minimizing the quantization MSE over clipping ratios 1, 1 - 1/steps, ... of the max (per channel
    along `axis`, or per tensor). Used to initialize weight steps and, without a calibrated range, activation steps.
    A per-tensor search looks at an evenly strided sample of at most 65,536 values (plus the extreme) so that
    initializing a large activation costs no more than a training step."""
    qmin, qmax = qrange(bits, signed)
    x = x.detach().float()
    if axis is None:
        flat = x.reshape(-1)
        if flat.numel() > MSE_SAMPLE:
            extreme = flat.abs().argmax() if signed else flat.argmax()
            flat = torch.cat([flat[::flat.numel() // MSE_SAMPLE], flat[extreme].reshape(1)])
        flat = flat.reshape(1, -1)
    else:
        flat = x.transpose(0, axis).reshape(x.shape[axis], -1)
    top = flat.abs().amax(dim=1) if signed else flat.clamp(min=0).amax(dim=1)
    top = top.clamp(min=1e-8)
    best_err = None
    best = None
    for i in range(steps):
        ratio = 1.0 - i / steps
        s = (top * ratio / qmax)[:, None]
        err = ((torch.clamp(torch.round(flat / s), qmin, qmax) * s - flat) ** 2).mean(dim=1)
        if best is None:
            best_err, best = err, s[:, 0].clone()
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s[:, 0], best)
    return best if axis is not None else best.reshape(())


class LsqQuantizer(nn.Module):
    """Fake quantizer with a learnable step. `channels` > 0 gives one step per slice along `axis` (weights)."""

    def __init__(self, bits: int, signed: bool, channels: int = 0, axis: int = 0):
        super().__init__()
        self.bits = bits
        self.signed = signed
        self.axis = axis
        self.channels = channels
        self.qmin, self.qmax = qrange(bits, signed)
        self.scale = nn.Parameter(torch.ones(channels) if channels else torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.export_mode = False

    def init_from(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(mse_scale(x, self.bits, self.signed, self.axis if self.channels else None))
            self.initialized.fill_(True)

    def init_from_range(self, lo: float, hi: float) -> None:
        """Initial step from a calibrated range (symmetric for signed, [0, hi] for unsigned)."""
        top = max(abs(lo), abs(hi)) if self.signed else max(hi, 0.0)
        with torch.no_grad():
            self.scale.fill_(max(top, 1e-8) / self.qmax)
            self.initialized.fill_(True)

    def init_from_scales(self, scales) -> None:
        values = torch.as_tensor(list(scales), dtype=torch.float32)
        if values.numel() != max(self.channels, 1):
            raise ValueError(f"{values.numel()} scales given for a quantizer with {max(self.channels, 1)} steps")
        with torch.no_grad():
            self.scale.copy_(values.reshape(self.scale.shape))
            self.initialized.fill_(True)

    def export_zero_point(self) -> int:
        """The QuantizeLinear zero point: 0 on the symmetric grids; an offset grid stores q + z."""
        return 0

    def _shaped(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.channels:
            return s
        shape = [1] * x.dim()
        shape[self.axis] = self.channels
        return s.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        if self.export_mode:
            return _ActivationQdq.apply(x, self.scale.detach().clone(),
                                        torch.tensor(self.qmin * float(self.scale)),
                                        torch.tensor(self.qmax * float(self.scale)),
                                        torch.tensor(self.export_zero_point(),
                                                     dtype=torch.int8 if self.signed else torch.uint8))
        n = x.numel() / max(self.channels, 1)
        g = 1.0 / math.sqrt(max(n, 1.0) * self.qmax)
        s = self._shaped(_grad_scale(self.scale, g), x).abs().clamp(min=1e-8)
        return _round_ste(torch.clamp(x / s, self.qmin, self.qmax)) * s

    def integer_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as integers in the b-bit range (int8 container), for a QDQ export."""
        s = self._shaped(self.scale.detach().abs().clamp(min=1e-8), w)
        return torch.clamp(torch.round(w.detach() / s), self.qmin, self.qmax).to(torch.int8)

    def extra_repr(self) -> str:
        kind = f"per-channel({self.channels}, axis={self.axis})" if self.channels else "per-tensor"
        return f"bits={self.bits}, signed={self.signed}, {kind}"


class _ActivationQdq(torch.autograd.Function):
    """Exports as Clip -> QuantizeLinear -> DequantizeLinear. The Clip keeps values in the b-bit range although the
    container is 8 bits, so ORT computes exactly what training simulated."""

    @staticmethod
    def forward(ctx, x, scale, lo, hi, zero_point):
        return torch.clamp(torch.round(x / scale), lo / scale, hi / scale) * scale

    @staticmethod
    def symbolic(g, x, scale, lo, hi, zero_point):
        clipped = g.op("Clip", x, lo, hi)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", clipped, scale, zero_point), scale, zero_point)


class WeightDequant(torch.autograd.Function):
    """Exports an integer weight initializer followed by a per-channel DequantizeLinear."""

    @staticmethod
    def forward(ctx, q, scale, zero_point, axis: int):
        shape = [1] * q.dim()
        shape[axis] = -1
        return q.float() * scale.reshape(shape)

    @staticmethod
    def symbolic(g, q, scale, zero_point, axis: int):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)
