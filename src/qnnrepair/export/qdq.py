"""Export-only stand-ins for QuantConv2d / QuantLinear that the ONNX exporter writes as QDQ.

Each stand-in calls an autograd Function whose `symbolic` emits the QDQ pattern directly:

    x -> [Clip] -> QuantizeLinear(s_x, z_x: uint8) -> DequantizeLinear -> Conv / Gemm
    weight_int: int8 initializer -> DequantizeLinear(weight_scale, 0, axis=0) -^      ^
    bias_int:  int32 initializer -> DequantizeLinear(weight_scale * s_x, 0, axis=0) --+

Emitting the nodes ourselves (rather than exporting fake-quantized float weights and rewriting
the graph afterwards) means the integers go into the file as they are, with no pattern matching
on the exporter's output, and each initializer keeps its layer's name
(`layer1.0.conv1.weight_int`). The integers are held as buffers so that the exporter turns
them into initializers of their own dtype.

Clip: QuantizeLinear saturates to [0, 255] only, so for act_bits < 8 a Clip to the real range
[(0 - z_x) s_x, (2^b - 1 - z_x) s_x] comes first. It changes nothing inside that range and
maps everything outside it to the end points, which quantize to 0 and 2^b - 1 exactly as the
simulation's clamp does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from qnnrepair.quantization.modules import QuantConv2d, QuantLinear, _QuantLayer

UINT8_LEVELS = 255


@dataclass(frozen=True)
class ConvGeometry:
    """Conv attributes in ONNX terms (pads as [top, left, bottom, right])."""

    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int


def conv_geometry(layer: QuantConv2d) -> ConvGeometry:
    kernel = tuple(layer.weight_int.shape[2:])
    strides, dilations = _pair(layer.stride), _pair(layer.dilation)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # "same" (stride 1): torch puts the odd extra pixel at the end
            total = [d * (k - 1) for d, k in zip(dilations, kernel)]
            before = [t // 2 for t in total]
            pads = (*before, *(t - b for t, b in zip(total, before)))
    else:
        pad = _pair(layer.padding)
        pads = (pad[0], pad[1], pad[0], pad[1])
    return ConvGeometry(kernel, strides, pads, dilations, layer.groups)


def _quantize_input(x, input_scale, input_zero_point, input_min, input_max):
    """The simulation's input quantization, written with the Clip the ONNX graph uses."""
    if input_min is not None:
        x = torch.clamp(x, input_min, input_max)
    zp = input_zero_point.float()
    q = torch.clamp(torch.round(x / input_scale) + zp, 0, UINT8_LEVELS)
    return (q - zp) * input_scale


def _dequantized(weight_int, weight_scale, bias_int, bias_scale):
    shape = (-1,) + (1,) * (weight_int.dim() - 1)
    weight = weight_int.float() * weight_scale.reshape(shape)
    bias = (bias_int.double() * bias_scale.double()).float()
    return weight, bias


def _symbolic_inputs(g, x, input_scale, input_zero_point, input_min, input_max, weight_int,
                     weight_scale, weight_zero_point, bias_int, bias_scale, bias_zero_point):
    """The three dequantized operands of the Conv / Gemm node."""
    if input_min is not None:
        x = g.op("Clip", x, input_min, input_max)
    xq = g.op("QuantizeLinear", x, input_scale, input_zero_point)
    xd = g.op("DequantizeLinear", xq, input_scale, input_zero_point)
    wd = g.op("DequantizeLinear", weight_int, weight_scale, weight_zero_point, axis_i=0)
    bd = g.op("DequantizeLinear", bias_int, bias_scale, bias_zero_point, axis_i=0)
    return xd, wd, bd


class _QDQConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, input_scale, input_zero_point, input_min, input_max, weight_int,
                weight_scale, weight_zero_point, bias_int, bias_scale, bias_zero_point,
                geometry: ConvGeometry):
        weight, bias = _dequantized(weight_int, weight_scale, bias_int, bias_scale)
        x = _quantize_input(x, input_scale, input_zero_point, input_min, input_max)
        top, left, bottom, right = geometry.pads
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, weight, bias, geometry.strides, 0, geometry.dilations, geometry.group)

    @staticmethod
    def symbolic(g, x, input_scale, input_zero_point, input_min, input_max, weight_int,
                 weight_scale, weight_zero_point, bias_int, bias_scale, bias_zero_point,
                 geometry: ConvGeometry):
        xd, wd, bd = _symbolic_inputs(g, x, input_scale, input_zero_point, input_min, input_max,
                                      weight_int, weight_scale, weight_zero_point, bias_int,
                                      bias_scale, bias_zero_point)
        return g.op("Conv", xd, wd, bd, kernel_shape_i=list(geometry.kernel_shape),
                    strides_i=list(geometry.strides), pads_i=list(geometry.pads),
                    dilations_i=list(geometry.dilations), group_i=geometry.group)


class _QDQLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, input_scale, input_zero_point, input_min, input_max, weight_int,
                weight_scale, weight_zero_point, bias_int, bias_scale, bias_zero_point,
                rank: int):
        weight, bias = _dequantized(weight_int, weight_scale, bias_int, bias_scale)
        x = _quantize_input(x, input_scale, input_zero_point, input_min, input_max)
        return F.linear(x, weight, bias)

    @staticmethod
    def symbolic(g, x, input_scale, input_zero_point, input_min, input_max, weight_int,
                 weight_scale, weight_zero_point, bias_int, bias_scale, bias_zero_point,
                 rank: int):
        xd, wd, bd = _symbolic_inputs(g, x, input_scale, input_zero_point, input_min, input_max,
                                      weight_int, weight_scale, weight_zero_point, bias_int,
                                      bias_scale, bias_zero_point)
        if rank == 2:
            return g.op("Gemm", xd, wd, bd, transB_i=1)
        # Gemm takes matrices only: (..., in) inputs go through MatMul with W^T, then Add.
        wt = g.op("Transpose", wd, perm_i=[1, 0])
        return g.op("Add", g.op("MatMul", xd, wt), bd)


class _QDQLayer(nn.Module):
    """The integers and scales of one quantized layer, as the ONNX initializers will hold them."""

    def __init__(self, layer: _QuantLayer) -> None:
        super().__init__()
        n_out = layer.out_features
        self.act_bits = layer.act_bits
        self.register_buffer("input_scale", layer.input_scale.detach().float().clone())
        self.register_buffer("input_zero_point", layer.input_zero_point.detach().to(torch.uint8))
        if layer.act_bits < 8:
            zp, s = int(layer.input_zero_point), layer.input_scale.detach().float()
            self.register_buffer("input_min", (0 - zp) * s)
            self.register_buffer("input_max", (2**layer.act_bits - 1 - zp) * s)
        else:
            self.input_min = self.input_max = None
        self.register_buffer("weight_int", layer.weight_int.detach().to(torch.int8).clone())
        self.register_buffer("weight_scale", layer.weight_scale.detach().float().clone())
        self.register_buffer("weight_zero_point", torch.zeros(n_out, dtype=torch.int8))
        self.register_buffer("bias_int", layer.bias_int.detach().to(torch.int32).clone())
        self.register_buffer("bias_scale", layer.bias_scale().detach().float().clone())
        self.register_buffer("bias_zero_point", torch.zeros(n_out, dtype=torch.int32))

    def _operands(self, x: torch.Tensor) -> tuple:
        return (x, self.input_scale, self.input_zero_point, self.input_min, self.input_max,
                self.weight_int, self.weight_scale, self.weight_zero_point, self.bias_int,
                self.bias_scale, self.bias_zero_point)


class QDQConv2d(_QDQLayer):
    def __init__(self, layer: QuantConv2d) -> None:
        super().__init__(layer)
        self.geometry = conv_geometry(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QDQConv2dFunction.apply(*self._operands(x), self.geometry)


class QDQLinear(_QDQLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QDQLinearFunction.apply(*self._operands(x), x.dim())


def qdq_module(layer: nn.Module) -> _QDQLayer:
    """The export stand-in for a QuantConv2d / QuantLinear."""
    if isinstance(layer, QuantConv2d):
        return QDQConv2d(layer)
    if isinstance(layer, QuantLinear):
        return QDQLinear(layer)
    raise TypeError(f"not a quantized layer: {type(layer).__name__}")
