"""The quantized layers of a TFLite graph: what a repair changes.

They keep the interface of qnnrepair.quantization.QuantConv2d / QuantLinear where it fits
(`weight_int`, `weight_scale`, `bias_int`, `input_scale`, `input_zero_point`,
`quantize_input`, `dequantized_weight`, `dequantized_bias`, `bias_scale`, `qmax`,
`out_features`, `stride`/`padding`/`dilation`/`groups`, PyTorch weight layout), and differ in
three ways, because a deployed file is not symmetric-unsigned like our own quantizer:

- `weight_int` holds the *centred* integers q - z_w (int16): real weight = s_w * weight_int
  holds for both files, but the grid is [qmin, qmax] = [-128 - z_w, 127 - z_w] (int8) or
  [-z_w, 255 - z_w] (uint8), not [-qmax, qmax]: read `qmin` as well as `qmax`.
  `weight_zero_point` keeps z_w (per tensor; zeros for int8 per-channel files).
- The activation grid is the file's: unsigned or signed 8 bit (`act_qmin`, `act_qmax`).
- `padding` is always 0: the op in front pads with TensorFlow's SAME rule (more after than
  before), so the input a hook sees is already padded.

The output is the pre-activation in real units, s_x * s_w * (sum (q_x - z_x) w + bias_int),
computed from exact integers; the requantization to the output grid and the fused activation
live in the op that owns the layer (ops.ConvOp), as QuantConv2d leaves them to the next layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.formats.tflite.arithmetic import exact_in_float32


class _TFLiteLayer(nn.Module):
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
        """Largest allowed centred weight. For int8 files the TFLite spec keeps weights in
        [-127, 127], so qmin = -qmax there; uint8 files have qmin != -qmax."""
        return self.stored_qmax - int(self.weight_zero_point.min())

    @property
    def out_features(self) -> int:
        return self.weight_int.shape[0]

    def input_int(self, x: torch.Tensor) -> torch.Tensor:
        """Centred integer input q_x - z_x (float tensor of integers) from real units."""
        z = int(self.input_zero_point)
        return torch.round(x / self.input_scale).clamp_(self.act_qmin - z, self.act_qmax - z)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the integer kernel sees it, in real units."""
        return self.input_int(x) * self.input_scale

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.float() * self.weight_scale.reshape(shape)

    def bias_scale(self) -> torch.Tensor:
        """Scale of the int32 bias grid per output channel: s_w * s_x (what the kernel adds
        the bias at; the file's own bias scale agrees with it to float precision)."""
        return self.weight_scale * self.input_scale

    def dequantized_bias(self) -> torch.Tensor:
        return (self.bias_int.double() * self.bias_scale().double()).float()

    def accumulator_dtype(self) -> torch.dtype:
        """float32 when every partial sum is an integer below 2^24 (then a float32 conv is
        exact integer arithmetic), else float64; checked on the current weights."""
        x_max = max(self.act_qmax - int(self.input_zero_point), int(self.input_zero_point)
                    - self.act_qmin)
        row_l1 = self.weight_int.reshape(self.out_features, -1).abs().sum(dim=1).max()
        return torch.float32 if exact_in_float32(float(row_l1) * x_max) else torch.float64

    def _accumulate(self, x: torch.Tensor, op) -> torch.Tensor:
        dtype = self.accumulator_dtype()
        acc = op(self.input_int(x).to(dtype), self.weight_int.to(dtype)).double()
        return acc.add_(self.bias_int.double().reshape(self._channel_shape()))

    def accumulator(self, x: torch.Tensor) -> torch.Tensor:
        """The int32 accumulator sum (q_x - z_x)(q_w - z_w) + bias_int, as float64."""
        raise NotImplementedError

    def _channel_shape(self) -> tuple[int, ...]:
        return (-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation in real units (float64, so the accumulator stays recoverable)."""
        return self.accumulator(x).mul_(self.bias_scale().double().reshape(self._channel_shape()))


class TFLiteConv2d(_TFLiteLayer):
    """CONV_2D (groups=1) or DEPTHWISE_CONV_2D (groups=in_channels); weight (out, in/groups,
    kh, kw) as in PyTorch."""

    def __init__(self, *args, stride=(1, 1), dilation=(1, 1), groups: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        self.padding = (0, 0)

    def _channel_shape(self) -> tuple[int, ...]:
        return (-1, 1, 1)

    def accumulator(self, x: torch.Tensor) -> torch.Tensor:
        return self._accumulate(x, lambda xi, w: F.conv2d(xi, w, None, self.stride, 0,
                                                          self.dilation, self.groups))

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight_int.shape)}, stride={self.stride}, "
                f"groups={self.groups}, per_channel={self.per_channel}")


class TFLiteLinear(_TFLiteLayer):
    """FULLY_CONNECTED; weight (out, in)."""

    def accumulator(self, x: torch.Tensor) -> torch.Tensor:
        return self._accumulate(x, lambda xi, w: F.linear(xi, w))

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight_int.shape)}, per_channel={self.per_channel}"


TFLITE_LAYERS = (TFLiteConv2d, TFLiteLinear)
