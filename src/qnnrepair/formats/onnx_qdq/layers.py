"""The quantized layers of a QDQ graph: a Conv / Gemm / MatMul whose weight (and bias) come
from DequantizeLinear of integer initializers, and whose input comes from a DequantizeLinear
of an activation. What a repair changes.

The interface and the arithmetic are qnnrepair.formats.layers.DeployedLayer's (shared with
the TFLite layers); what is QDQ's own:

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

from qnnrepair.formats.layers import DeployedConv2d, DeployedLayer, DeployedLinear


class _QDQLayer(DeployedLayer):
    """What a QDQ file adds to a deployed layer: the file's bias scale, the symmetric int8
    grid, float32 in and out, and where the integers live (the writer's targets). Comes
    first in the bases of QDQConv2d / QDQLinear, so the conv geometry passes through."""

    def __init__(self, weight_int: torch.Tensor, weight_scale: torch.Tensor,
                 weight_zero_point: torch.Tensor, bias_int: torch.Tensor,
                 bias_scale: torch.Tensor, input_scale: float, input_zero_point: int,
                 act_range: tuple[int, int], weight_range: tuple[int, int], per_channel: bool,
                 symmetric: bool, **geometry) -> None:
        super().__init__(weight_int, weight_scale, weight_zero_point, bias_int, input_scale,
                         input_zero_point, act_range, weight_range, per_channel, **geometry)
        self.register_buffer("file_bias_scale", bias_scale.to(torch.float32))
        # A bias on the accumulator's grid s_w * s_x (what quantize_static writes) is added to
        # the integer sum; one on another grid (a bias the exporter shares between layers,
        # quantized once for the first of them) is added in real units.
        accumulator_scale = (weight_scale.double() * float(input_scale)).float()
        self.bias_on_grid = bool(torch.allclose(self.file_bias_scale, accumulator_scale,
                                                rtol=1e-5, atol=0.0))
        self.bias_fixed = False  # set by the builder when the file shares the bias initializer
        self.symmetric = symmetric
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
        return super().qmin

    def input_int(self, x: torch.Tensor) -> torch.Tensor:
        return super().input_int(x.float())

    def bias_scale(self) -> torch.Tensor:
        """Scale of the int32 bias grid per output channel (the file's; = s_w * s_x)."""
        return self.file_bias_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation in real units, float32 (what ONNX Runtime's float Conv / Gemm
        computes from the dequantized operands)."""
        if self.bias_on_grid:
            if not torch.is_grad_enabled() and self.float32_exact():
                # float32 of (exact integer accumulator x float32 scale) is the correctly
                # rounded product, as the float64 path below rounds it: the same bits
                acc = self._op(self.input_int(x), self.weight_int.float(), self.bias_int.float())
                return acc.mul_(self.file_bias_scale.reshape(self._channel_shape()))
            return super().forward(x).float()
        dtype = self.accumulator_dtype()
        acc = self._op(self.input_int(x).to(dtype), self.weight_int.to(dtype)).double()
        shape = self._channel_shape()
        scale = (self.weight_scale.double() * self.input_scale.double()).reshape(shape)
        bias = (self.bias_int.double() * self.file_bias_scale.double()).reshape(shape)
        return (acc * scale + bias).float()


class QDQConv2d(_QDQLayer, DeployedConv2d):
    """Conv (2-D); weight (out, in/groups, kh, kw) as in PyTorch. `padding` is symmetric
    (PyTorch's); uneven ONNX pads become a Pad node in front."""


class QDQLinear(_QDQLayer, DeployedLinear):
    """Gemm / MatMul with a constant weight; weight (out, in) as in PyTorch."""


QDQ_LAYERS = (QDQConv2d, QDQLinear)
