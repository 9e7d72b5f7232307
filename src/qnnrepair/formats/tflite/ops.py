"""One nn.Module per TFLite operator.

Values travel between ops in real units (float32), NCHW for 4-D tensors. In the integer
simulation every value is exactly on its tensor's grid, (q - z) * s, and each op recovers the
integers q, computes like LiteRT (see arithmetic.py) and hands on its output grid. With
`float_mode` set (the float reference) the same ops compute in plain float: no rounding, fused
activations as real clamps. `integer_forward`, where an op has it, computes the same integers
on centred integers r = q - z instead of real values (the graph's fast path, graph.py), which
saves the division and rounding that recover q at every op. Ops whose meaning depends on the
axis order (reshape, squeeze, mean, pad, concatenation, fully connected) work in TFLite's NHWC
order internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.formats.tflite import arithmetic as ar
from qnnrepair.formats.tflite.layers import TFLITE_LAYERS


@dataclass(frozen=True)
class QParams:
    """A tensor's grid: real = scale * (q - zero_point), q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def to_int(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.scale).round_().add_(self.zero_point).clamp_(self.qmin, self.qmax)

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """r = q - z (float32) of real values: to_int(x) - zero_point."""
        z = self.zero_point
        return (x / self.scale).round_().clamp_(self.qmin - z, self.qmax - z)

    def real(self, r: torch.Tensor) -> torch.Tensor:
        """Real values of centred integers: r * s, the same floats as to_real(r + z)."""
        return r * self.scale

    def to_real(self, q: torch.Tensor) -> torch.Tensor:
        return q.to(torch.float32).sub_(self.zero_point).mul_(self.scale)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow SAME: total padding split with the extra pixel after (bottom/right).
    `size` is made a Python int: spatial sizes are static in a .tflite file, and so the
    padding is a constant when the float reference is traced (torch.onnx.export)."""
    size = int(size)
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class TFLiteOp(nn.Module):
    """Base: `out_q` is the output grid; `float_mode` switches to the float reference.
    `grid_free`: the op moves values without looking at them (reshape, pad), so its forward
    serves real values and centred integers alike."""

    grid_free = False

    def __init__(self, out_q: QParams | None) -> None:
        super().__init__()
        self.out_q = out_q
        self.float_mode = False

    def extra_repr(self) -> str:
        return f"float_mode={self.float_mode}"


class ConvOp(TFLiteOp):
    """CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: pad (SAME), the layer (pre-activation),
    then requantization with the fused activation's clamp. The layer is a TFLiteConv2d /
    TFLiteLinear, or in the float reference an nn.Conv2d / nn.Linear with dequantized values."""

    def __init__(self, layer: nn.Module, out_q: QParams, activation: str | None,
                 padding: str = "VALID", kernel=(1, 1), stride=(1, 1), dilation=(1, 1),
                 fully_connected: bool = False) -> None:
        super().__init__(out_q)
        self.conv = layer
        self.fully_connected = fully_connected
        self.activation = activation
        self.padding_mode, self.kernel, self.stride, self.dilation = (padding, tuple(kernel),
                                                                      tuple(stride),
                                                                      tuple(dilation))
        self.act_range = ar.activation_range(activation, out_q.scale, out_q.zero_point,
                                             "uint8" if out_q.qmin == 0 else "int8")

    def _pads(self, x: torch.Tensor) -> tuple[int, ...]:
        """SAME padding of a 4-D input in F.pad order (left, right, top, bottom); () if none."""
        if self.padding_mode != "SAME" or x.dim() != 4:
            return ()
        top, bottom = same_padding(x.shape[2], self.kernel[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[3], self.kernel[1], self.stride[1], self.dilation[1])
        return (left, right, top, bottom) if top or bottom or left or right else ()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads(x)
        return F.pad(x, pads) if pads else x

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        """FULLY_CONNECTED reads its input as rows of the last NHWC dimension's size."""
        if not self.fully_connected:
            return x
        fan_in = (self.conv.weight_int if hasattr(self.conv, "weight_int") else
                  self.conv.weight).shape[1]
        return to_nhwc(x).reshape(-1, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._flatten(self._pad(x))
        pre = self.conv(x)
        if not isinstance(self.conv, TFLITE_LAYERS):
            return ar.float_activation(pre, self.activation)
        shape = self.conv._channel_shape()
        # not in place: a forward hook on the layer may hold `pre`
        acc = (pre / self.conv.bias_scale().double().reshape(shape)).round_()
        q = ar.requantize_fp32(acc, self._requant_scale(), self.out_q.zero_point,
                               *self.act_range)
        out = self.out_q.to_real(q)
        if pre.requires_grad:  # straight-through across the requantization (graph.py)
            slope = ar.float_activation(pre.to(out.dtype), self.activation)
            out = out + (slope - slope.detach())
        return out

    def integer_forward(self, r: torch.Tensor) -> torch.Tensor:
        """forward's integers, centred, from centred input integers (requantize_fp32 without
        the zero point, which the next op would take off again)."""
        acc = self.conv.integer_accumulator(self._flatten(r), self._pads(r))
        zp = self.out_q.zero_point
        return acc.mul_(self._requant_scale()).clamp_(self.act_range[0] - zp,
                                                      self.act_range[1] - zp).round_()

    def _requant_scale(self) -> torch.Tensor:
        return torch.from_numpy(ar.requant_scale(
            float(self.conv.input_scale), self.conv.weight_scale.numpy(),
            self.out_q.scale)).reshape(self.conv._channel_shape())


class AddOp(TFLiteOp):
    def __init__(self, a_q: QParams, b_q: QParams, out_q: QParams, activation: str | None):
        super().__init__(out_q)
        self.a_q, self.b_q, self.activation = a_q, b_q, activation
        self.act_range = ar.activation_range(activation, out_q.scale, out_q.zero_point,
                                             "uint8" if out_q.qmin == 0 else "int8")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.float_mode:
            return ar.float_activation(a + b, self.activation)
        q = ar.xnnpack_add(self.a_q.to_int(a), self.a_q.zero_point, self.a_q.scale,
                           self.b_q.to_int(b), self.b_q.zero_point, self.b_q.scale,
                           self.out_q.zero_point, self.out_q.scale, *self.act_range)
        return self.out_q.to_real(q)

    def integer_forward(self, ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
        zo = self.out_q.zero_point
        max_abs = max(q.qmax - q.qmin for q in (self.a_q, self.b_q))
        return ar.xnnpack_add_centred(ra, self.a_q.scale, rb, self.b_q.scale, self.out_q.scale,
                                      self.act_range[0] - zo, self.act_range[1] - zo,
                                      max_abs).float()


class PoolOp(TFLiteOp):
    """AVERAGE_POOL_2D / MAX_POOL_2D; TFLite requires the same grid in and out."""

    def __init__(self, kind: str, in_q: QParams, out_q: QParams, kernel, stride,
                 padding: str, activation: str | None) -> None:
        super().__init__(out_q)
        self.kind, self.in_q, self.kernel, self.stride = kind, in_q, tuple(kernel), tuple(stride)
        self.padding_mode, self.activation = padding, activation
        self.act_range = ar.activation_range(activation, out_q.scale, out_q.zero_point,
                                             "uint8" if out_q.qmin == 0 else "int8")

    def _pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        if self.padding_mode != "SAME":
            return 0, 0, 0, 0
        top, bottom = same_padding(x.shape[2], self.kernel[0], self.stride[0], 1)
        left, right = same_padding(x.shape[3], self.kernel[1], self.stride[1], 1)
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads(x)
        v = x if self.float_mode else self.in_q.to_int(x).double()
        if self.kind == "max":
            out = F.max_pool2d(F.pad(v, pads, value=float("-inf")), self.kernel, self.stride)
        elif self.float_mode and not any(pads):  # full windows (and one AveragePool in ONNX)
            return ar.float_activation(F.avg_pool2d(v, self.kernel, self.stride), self.activation)
        else:  # padding is left out of the count, as TensorFlow does
            total = F.avg_pool2d(F.pad(v, pads), self.kernel, self.stride, divisor_override=1)
            ones = v.new_ones(1, 1, int(v.shape[2]), int(v.shape[3]))  # static: see same_padding
            count = F.avg_pool2d(F.pad(ones, pads), self.kernel, self.stride, divisor_override=1)
            if self.float_mode:
                return ar.float_activation(total / count, self.activation)
            out = ar.average_pool_round(total, count)
        if self.float_mode:
            return ar.float_activation(out, self.activation)
        return self.out_q.to_real(torch.clamp(out, *self.act_range))


class MeanOp(TFLiteOp):
    """MEAN over constant axes (given in NHWC order), XNNPACK-style requantization."""

    def __init__(self, axes: list[int], keep_dims: bool, in_q: QParams, out_q: QParams) -> None:
        super().__init__(out_q)
        self.axes, self.keep_dims, self.in_q = sorted(axes), keep_dims, in_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nhwc(x)
        axes = [a % x.dim() for a in self.axes]
        n = 1
        for a in axes:
            n *= int(x.shape[a])
        if self.float_mode:
            out = x.mean(dim=axes, keepdim=self.keep_dims)
            return to_nchw(out) if out.dim() == 4 else out
        total = (self.in_q.to_int(x) - self.in_q.zero_point).double().sum(dim=axes,
                                                                          keepdim=self.keep_dims)
        scale = ar.f32(ar.f32(self.in_q.scale) / ar.f32(ar.f32(self.out_q.scale) * n))
        q = ar.requantize_fp32(total, torch.tensor(scale), self.out_q.zero_point,
                               self.out_q.qmin, self.out_q.qmax)
        out = self.out_q.to_real(q)
        return to_nchw(out) if out.dim() == 4 else out


class ReshapeOp(TFLiteOp):
    """RESHAPE / SQUEEZE to the output tensor's static shape (batch kept dynamic)."""

    grid_free = True

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(None)
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the batch as -1 where the rest is known: a traced float reference keeps it dynamic
        batch = -1 if self.shape and -1 not in self.shape[1:] else x.shape[0]
        out = to_nhwc(x).reshape(batch, *self.shape[1:]) if self.shape else x.reshape(())
        return to_nchw(out)


class PadOp(TFLiteOp):
    """PAD with constant paddings (NHWC); pads with the zero point, i.e. real 0 (and centred
    integer 0)."""

    grid_free = True

    def __init__(self, paddings: list[tuple[int, int]]) -> None:
        super().__init__(None)
        self.pads = [int(v) for pair in reversed(paddings) for v in pair]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(F.pad(to_nhwc(x), self.pads))


class ConcatOp(TFLiteOp):
    """CONCATENATION along an NHWC axis; inputs on other grids are requantized (TFLite
    builtin: round half away)."""

    def __init__(self, axis: int, in_qs: list[QParams], out_q: QParams, activation: str | None):
        super().__init__(out_q)
        self.axis, self.in_qs, self.activation = axis, in_qs, activation
        self.act_range = ar.activation_range(activation, out_q.scale, out_q.zero_point,
                                             "uint8" if out_q.qmin == 0 else "int8")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        xs = [to_nhwc(x) for x in xs]
        if self.float_mode:
            return to_nchw(ar.float_activation(torch.cat(xs, dim=self.axis), self.activation))
        parts = []
        for x, q in zip(xs, self.in_qs):
            qi = q.to_int(x)
            if (q.scale, q.zero_point) != (self.out_q.scale, self.out_q.zero_point):
                ratio = ar.f32(q.scale) / ar.f32(self.out_q.scale)
                qi = ar.round_half_away((qi - q.zero_point) * ratio) + self.out_q.zero_point
            parts.append(qi)
        q = torch.clamp(torch.cat(parts, dim=self.axis), *self.act_range)
        return to_nchw(self.out_q.to_real(q))


class SoftmaxOp(TFLiteOp):
    def __init__(self, beta: float, in_q: QParams, out_q: QParams) -> None:
        super().__init__(out_q)
        self.beta, self.in_q = beta, in_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_mode:
            return torch.softmax(x * self.beta, dim=1)
        q = ar.softmax_quantized(self.in_q.to_int(x), self.in_q.scale, self.beta,
                                 self.out_q.zero_point, self.out_q.scale, self.out_q.qmin,
                                 self.out_q.qmax, dim=1)
        return self.out_q.to_real(q)


class RequantizeOp(TFLiteOp):
    """QUANTIZE (float -> int, or int -> int on another grid) and DEQUANTIZE (int -> float).
    Values are already real, so this rounds onto the output grid (half to even, as XNNPACK's
    convert); a DEQUANTIZE (out_q None) passes values on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_mode or self.out_q is None:
            return x
        return self.out_q.to_real(self.out_q.to_int(x))
