"""The quantized layers of a QDQ graph: a Conv / Gemm / MatMul whose weight (and bias) come
from DequantizeLinear of integer initializers, and whose input comes from a DequantizeLinear
of an activation. What a repair changes.

Same interface as qnnrepair.formats.tflite's layers (and QuantConv2d / QuantLinear where it
fits): `weight_int`, `weight_scale`, `weight_zero_point`, `bias_int`, `input_scale`,
`input_zero_point`, `quantize_input`, `dequantized_weight`, `dequantized_bias`, `bias_scale`,
`qmin`/`qmax`, `out_features`, `stride`/`padding`/`dilation`/`groups`, PyTorch weight layout.

- `weight_int` holds the centred integers q - z_w (int16): real weight = s_w * weight_int.
  ONNX Runtime's default int8 weights are symmetric (z_w = 0, [-127, 127]), so qmin = -qmax;
  uint8 weights have a zero point and qmin != -qmax: read `qmin` as well as `qmax`.
- The input grid is the file's (int8 or uint8, asymmetric): `act_qmin`, `act_qmax`.
- The bias is dequantized with the file's own bias scale (`bias_scale()`), which ONNX
  Runtime's quantizer sets to s_x * s_w.

The forward pass takes the input in real units (on its grid, as the DequantizeLinear in front
hands it), recovers the integers, accumulates exactly and returns the pre-activation in real
units, float32: what ONNX Runtime's float Conv / Gemm computes from the dequantized operands,
up to float32 summation order. The QuantizeLinear after the layer is a node of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.formats.tflite.arithmetic import exact_in_float32


class _QDQLayer(nn.Module):
    def __init__(self, weight_int: torch.Tensor, weight_scale: torch.Tensor,
                 weight_zero_point: torch.Tensor, bias_int: torch.Tensor,
                 bias_scale: torch.Tensor, input_scale: float, input_zero_point: int,
                 act_range: tuple[int, int], weight_range: tuple[int, int], per_channel: bool,
                 symmetric: bool) -> None:
        super().__init__()
        self.register_buffer("weight_int", weight_int.to(torch.int16))
        self.register_buffer("weight_scale", weight_scale.to(torch.float32))
        self.register_buffer("weight_zero_point", weight_zero_point.to(torch.int32))
        self.register_buffer("bias_int", bias_int.to(torch.int32))
        self.register_buffer("file_bias_scale", bias_scale.to(torch.float32))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        self.register_buffer("input_zero_point", torch.tensor(int(input_zero_point),
                                                              dtype=torch.int32))
        self.act_qmin, self.act_qmax = act_range
        self.stored_qmin, self.stored_qmax = weight_range  # the initializer's integer type
        self.per_channel, self.symmetric = per_channel, symmetric
        self.weight_bits = self.act_bits = 8
        # Where the integers live in the file (set by the graph builder; the writer's targets).
        self.weight_initializer: str = ""
        self.bias_initializer: str | None = None
        self.weight_transposed = False  # file layout (in, out) for Gemm transB=0 / MatMul
        self.node_name = ""

    @property
    def qmin(self) -> int:
        """Smallest allowed centred weight. Symmetric int8 files keep [-qmax, qmax] (what
        ONNX Runtime's quantizer writes); others reach the stored type's minimum minus z_w."""
        if self.symmetric:
            return -self.qmax
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
        return torch.round(x.float() / self.input_scale).clamp_(self.act_qmin - z,
                                                                 self.act_qmax - z)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the integer kernel sees it, in real units."""
        return self.input_int(x) * self.input_scale

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.float() * self.weight_scale.reshape(shape)

    def bias_scale(self) -> torch.Tensor:
        """Scale of the int32 bias grid per output channel (the file's; = s_w * s_x)."""
        return self.file_bias_scale

    def dequantized_bias(self) -> torch.Tensor:
        return (self.bias_int.double() * self.bias_scale().double()).float()

    def accumulator_dtype(self) -> torch.dtype:
        """float32 when every partial sum is an integer below 2^24, else float64."""
        x_max = max(self.act_qmax - int(self.input_zero_point),
                    int(self.input_zero_point) - self.act_qmin)
        row_l1 = self.weight_int.reshape(self.out_features, -1).abs().sum(dim=1).max()
        return torch.float32 if exact_in_float32(float(row_l1) * x_max) else torch.float64

    def _channel_shape(self, rank: int) -> tuple[int, ...]:
        return (-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.accumulator_dtype()
        acc = self._op(self.input_int(x).to(dtype), self.weight_int.to(dtype)).double()
        shape = self._channel_shape(acc.dim())
        acc.add_(self.bias_int.double().reshape(shape))
        return acc.mul_(self.bias_scale().double().reshape(shape)).float()

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class QDQConv2d(_QDQLayer):
    """Conv (2-D); weight (out, in/groups, kh, kw) as in PyTorch. `padding` is symmetric
    (PyTorch's); uneven ONNX pads become a Pad node in front."""

    def __init__(self, *args, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.dilation, self.groups = tuple(dilation), groups

    def _channel_shape(self, rank: int) -> tuple[int, ...]:
        return (-1,) + (1,) * (rank - 2)

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"weight={tuple(self.weight_int.shape)}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, per_channel={self.per_channel}")


class QDQLinear(_QDQLayer):
    """Gemm / MatMul with a constant weight; weight (out, in) as in PyTorch."""

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight_int.shape)}, per_channel={self.per_channel}"


QDQ_LAYERS = (QDQConv2d, QDQLinear)
