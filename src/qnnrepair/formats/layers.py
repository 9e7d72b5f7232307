"""The quantized layers of a deployed file (TFLite, ONNX QDQ): what a repair changes.

`DeployedLayer` states the contract once. It keeps the interface of
qnnrepair.quantization.QuantConv2d / QuantLinear where it fits (`weight_int`, `weight_scale`,
`bias_int`, `input_scale`, `input_zero_point`, `quantize_input`, `dequantized_weight`,
`dequantized_bias`, `bias_scale`, `qmax`, `out_features`, `stride`/`padding`/`dilation`/
`groups`, PyTorch weight layout), and differs where a deployed file is not symmetric-unsigned
like our own quantizer:

- `weight_int` holds the *centred* integers q - z_w (int16): real weight = s_w * weight_int,
  on the grid [qmin, qmax] = [stored minimum - z_w, stored maximum - z_w], not
  [-qmax, qmax]: read `qmin` as well as `qmax`. `weight_zero_point` keeps z_w per channel.
- The activation grid is the file's (int8 or uint8, asymmetric): `act_qmin`, `act_qmax`.

The forward pass takes the input in real units, recovers its integers, accumulates exactly
(float32 when that is exact, else float64) and returns the pre-activation in real units,
s_x * s_w * (sum (q_x - z_x) w + bias_int). What follows the layer (requantization, fused
activation) belongs to the format's graph. A format subclasses `DeployedConv2d` /
`DeployedLinear` and overrides what its runtime does differently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.formats.arithmetic import exact_in_float32


class DeployedLayer(nn.Module):
    """Integer weights, bias and input grid of one deployed layer; subclasses give `_op`
    (the float op on integer-valued tensors) and `_channel_shape`."""

    def __init__(self, weight_int: torch.Tensor, weight_scale: torch.Tensor,
                 weight_zero_point: torch.Tensor, bias_int: torch.Tensor, input_scale: float,
                 input_zero_point: int, act_range: tuple[int, int], weight_range: tuple[int, int],
                 per_channel: bool) -> None:
        super().__init__()
        self.register_buffer("weight_int", weight_int.to(torch.int16))
        self.register_buffer("weight_scale", weight_scale.to(torch.float32))
        self.register_buffer("weight_zero_point", weight_zero_point.to(torch.int32))
        self.register_buffer("bias_int", bias_int.to(torch.int32))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        self.register_buffer("input_zero_point", torch.tensor(int(input_zero_point),
                                                              dtype=torch.int32))
        self.act_qmin, self.act_qmax = act_range
        self.stored_qmin, self.stored_qmax = weight_range  # the file's integer type
        self.per_channel = per_channel
        self.weight_bits = self.act_bits = 8

    @property
    def qmin(self) -> int:
        """Smallest allowed centred weight: the stored type's minimum minus z_w."""
        return self.stored_qmin - int(self.weight_zero_point.max())

    @property
    def qmax(self) -> int:
        """Largest allowed centred weight: the stored type's maximum minus z_w."""
        return self.stored_qmax - int(self.weight_zero_point.min())

    @property
    def out_features(self) -> int:
        return self.weight_int.shape[0]

    def input_int(self, x: torch.Tensor) -> torch.Tensor:
        """Centred integer input q_x - z_x (float tensor of integers) from real units."""
        z = int(self.input_zero_point)
        return (x / self.input_scale).round_().clamp_(self.act_qmin - z, self.act_qmax - z)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the integer kernel sees it, in real units."""
        return self.input_int(x) * self.input_scale

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.float() * self.weight_scale.reshape(shape)

    def stored_weight(self) -> torch.Tensor:
        """The file's integers q_w = weight_int + z_w (int64), in PyTorch layout."""
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.long() + self.weight_zero_point.long().reshape(shape)

    def bias_scale(self) -> torch.Tensor:
        """Scale of the int32 bias grid per output channel: s_w * s_x (what the kernel adds
        the bias at; the file's own bias scale agrees with it to float precision)."""
        return self.weight_scale * self.input_scale

    def dequantized_bias(self) -> torch.Tensor:
        return (self.bias_int.double() * self.bias_scale().double()).float()

    def accumulator_dtype(self) -> torch.dtype:
        """float32 when every partial sum is an integer below 2^24 (then a float32 conv is
        exact integer arithmetic), else float64; checked on the current weights."""
        return torch.float32 if exact_in_float32(self._partial_sum_bound()) else torch.float64

    def float32_exact(self) -> bool:
        """Every partial sum, the bias and the accumulator are integers below 2^24, so a
        float32 convolution with the bias added is the integer one."""
        return exact_in_float32(self._partial_sum_bound() + self._weight_bounds()[1])

    def _partial_sum_bound(self) -> float:
        """The largest |partial sum| of the accumulation: largest |input| times the largest row
        L1 norm of the current weights."""
        x_max = max(self.act_qmax - int(self.input_zero_point),
                    int(self.input_zero_point) - self.act_qmin)
        return self._max_row_l1() * x_max

    def _max_row_l1(self) -> float:
        """The largest L1 norm of one output channel's current integer weights."""
        return self._weight_bounds()[0]

    def _weight_bounds(self) -> tuple[float, float, int, int]:
        """(largest row L1 norm of weight_int, largest |bias_int|, smallest and largest
        weight) of the current integers."""
        def bounds():
            w, b = self.weight_int, self.bias_int
            return (float(w.reshape(self.out_features, -1).abs().sum(dim=1).max()),
                    float(b.abs().max()) if b.numel() else 0.0, int(w.min()), int(w.max()))
        return self._derived("bounds", bounds)

    def _derived(self, name: str, compute):
        """`compute()`, kept until weight_int or bias_int change: every forward pass reads
        these values, and a tensor's data pointer and version counter change with any
        replacement or in-place write."""
        w, b = self.weight_int, self.bias_int
        key = (w.data_ptr(), w._version, b.data_ptr(), b._version)
        memo = self.__dict__.setdefault("_memo", {})
        if memo.get("key") != key:
            memo.clear()
            memo["key"] = key
        if name not in memo:
            memo[name] = compute()
        return memo[name]

    def accumulator(self, x: torch.Tensor) -> torch.Tensor:
        """The int32 accumulator sum (q_x - z_x)(q_w - z_w) + bias_int, as float64."""
        dtype = self.accumulator_dtype()
        acc = self._op(self.input_int(x).to(dtype), self.weight_int.to(dtype)).double()
        return acc.add_(self.bias_int.double().reshape(self._channel_shape()))

    def integer_accumulator(self, xi: torch.Tensor, pads: tuple[int, ...] = ()) -> torch.Tensor:
        """float32(accumulator) of centred integer input `xi` (float32) zero-padded by `pads`
        (F.pad order): what a runtime's fp32 requantization multiplies. As an int8 matrix
        product when `_int8_product_exact`; in float32 alone when every partial sum and the
        bias are integers below 2^24 (several times faster than float64); when only the bias
        is larger, the float32 sums plus the bias in int32; else rounded from the exact
        float64 sum."""
        if not any(pads) and self._int8_product_exact():
            return self._int8_accumulator(xi)
        if self.float32_exact():
            return self._padded_op(xi, self.weight_int.float(), pads, self.bias_int.float())
        shape = self._channel_shape()
        if exact_in_float32(self._partial_sum_bound()):  # a large bias alone: added as int32
            acc = self._padded_op(xi, self.weight_int.float(), pads, None)
            if self._partial_sum_bound() + self._weight_bounds()[1] < 2**31:
                return acc.to(torch.int32).add_(self.bias_int.reshape(shape)).float()
            acc = acc.double()
        else:
            acc = self._padded_op(xi.double(), self.weight_int.double(), pads, None)
        return acc.add_(self.bias_int.double().reshape(shape)).float()

    def _as_rows(self) -> bool:
        """Whether the layer is one matrix product of input rows (a dense layer, a 1x1 conv)."""
        return True

    def _int8_product_exact(self) -> bool:
        """An 8-bit activation grid, weights that fit int8 and int32 partial sums: then the
        accumulator is an int8 x int8 -> int32 matrix product (torch._int_mm), exact on any CPU
        and several times faster than float32 where the CPU has 8-bit dot products."""
        row_l1, _, w_min, w_max = self._weight_bounds()
        return (self._as_rows() and self.act_qmax - self.act_qmin == 255
                and w_min >= -128 and w_max <= 127 and row_l1 * 255 < 2**31)

    def _int8_accumulator(self, xi: torch.Tensor) -> torch.Tensor:
        """float32(accumulator) as one int8 matrix product: the input is shifted onto int8
        (u = q_x - qmin - 128), and the shift comes back as a per-channel constant,
        sum (q_x - z_x) w = sum u w + (qmin + 128 - z_x) sum w."""
        shift = self.act_qmin + 128 - int(self.input_zero_point)

        def operands():
            w = self.weight_int.reshape(self.out_features, -1)
            offset = shift * w.sum(dim=1, dtype=torch.int32) + self.bias_int
            return w.to(torch.int8).t(), offset.to(torch.int32)
        w_t, offset = self._derived(f"int8 operands, shift {shift}", operands)
        rows, restore = _rows(xi)
        u = rows.to(torch.int16).sub_(shift).to(torch.int8)  # faster than a float subtraction
        acc = torch._int_mm(u, w_t)
        acc += offset
        return restore(acc.float())

    def _padded_op(self, x: torch.Tensor, w: torch.Tensor, pads: tuple[int, ...],
                   bias: torch.Tensor | None) -> torch.Tensor:
        """`_op` on `x` zero-padded by `pads` (real 0 is centred integer 0), plus `bias`."""
        return self._op(zero_pad(x, pads) if any(pads) else x, w, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation in real units (float64, so the accumulator stays recoverable)."""
        return self.accumulator(x).mul_(self.bias_scale().double().reshape(self._channel_shape()))

    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
        raise NotImplementedError

    def _channel_shape(self) -> tuple[int, ...]:
        """How a per-output-channel vector broadcasts against the output."""
        return (-1,)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight_int.shape)}, per_channel={self.per_channel}"


class DeployedConv2d(DeployedLayer):
    """A 2-D convolution; weight (out, in/groups, kh, kw) as in PyTorch."""

    def __init__(self, *args, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.dilation, self.groups = tuple(dilation), groups

    def _channel_shape(self) -> tuple[int, ...]:
        return (-1, 1, 1)

    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
            padding=None) -> torch.Tensor:
        padding = self.padding if padding is None else padding
        if self._pointwise() and padding == (0, 0) and x.dim() == 4:
            return _pointwise(x, w.reshape(w.shape[0], -1), bias)
        return F.conv2d(x, w, bias, self.stride, padding, self.dilation, self.groups)

    def _padded_op(self, x: torch.Tensor, w: torch.Tensor, pads: tuple[int, ...],
                   bias: torch.Tensor) -> torch.Tensor:
        """Symmetric padding goes to the convolution itself (no padded copy of the input)."""
        if len(pads) == 4 and self.padding == (0, 0) and pads[0] == pads[1] and \
                pads[2] == pads[3]:
            return self._op(x, w, bias, (pads[2], pads[0]))
        return super()._padded_op(x, w, pads, bias)

    def _pointwise(self) -> bool:
        return (self.groups == 1 and self.stride == (1, 1)
                and tuple(self.weight_int.shape[2:]) == (1, 1))

    def _as_rows(self) -> bool:
        return self._pointwise() and self.padding == (0, 0)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight_int.shape)}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, per_channel={self.per_channel}")


def _pointwise(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding) as one matrix product, which PyTorch's own
    choice for this case (an im2col path) is several times slower than; for integer-valued
    operands the sums are exact, so the result is the same. `w` is (out, in)."""
    n, c, h, wd = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        out = rows @ w.t() if bias is None else torch.addmm(bias, rows, w.t())
        return out.reshape(n, h, wd, -1).permute(0, 3, 1, 2)
    out = torch.matmul(w, x.reshape(n, c, h * wd))
    if bias is not None:
        out.add_(bias.reshape(-1, 1))
    return out.reshape(n, -1, h, wd)


def zero_pad(x: torch.Tensor, pads: tuple[int, ...]) -> torch.Tensor:
    """F.pad(x, pads) of a 4-D tensor (pads (left, right, top, bottom)), in x's memory format.
    F.pad fills the whole output before copying x in; on ImageNet activations that fill costs
    as much as the depthwise convolution after it, so only the border is zeroed here."""
    left, right, top, bottom = pads
    n, c, h, w = x.shape
    fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
           else torch.contiguous_format)
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype,
                      memory_format=fmt)
    out[:, :, top:top + h, left:left + w] = x
    out[:, :, :top].zero_()
    out[:, :, top + h:].zero_()
    out[:, :, :, :left].zero_()
    out[:, :, :, left + w:].zero_()
    return out


def _rows(x: torch.Tensor):
    """`x` as rows of its channels (a 2-D input is already), and the function that puts rows
    of outputs back in `x`'s layout (NCHW values, memory as `x`'s)."""
    if x.dim() == 2:
        return x, lambda out: out
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last)

    def restore(out: torch.Tensor) -> torch.Tensor:
        out = out.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()

    return x.permute(0, 2, 3, 1).reshape(-1, c), restore


class DeployedLinear(DeployedLayer):
    """A fully connected layer; weight (out, in) as in PyTorch."""

    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
        return F.linear(x, w, bias)
