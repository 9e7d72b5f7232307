"""Quantized Conv2d / Linear: integer weights and bias plus scales, simulated in float.

The forward pass computes exactly what an integer kernel computes, rescaled to real units:
    y = s_w * s_x * (sum_j q_w[j] * (q_x[j] - z_x) + q_b)
with q_x the unsigned input, q_w the symmetric weights and q_b the int32 bias. Holding the
integers themselves (not fake-quantized floats) makes a repair a change of integers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.quantization.primitives import fake_quantize_activation, weight_qmax

INT32_MAX = 2**31 - 1


class _QuantLayer(nn.Module):
    def __init__(self, out_features: int, weight_shape: tuple[int, ...], weight_bits: int,
                 act_bits: int) -> None:
        super().__init__()
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.register_buffer("weight_int", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias_int", torch.zeros(out_features, dtype=torch.int32))
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("input_zero_point", torch.tensor(0, dtype=torch.int32))
        # (float weight, float bias) while quantization.checks runs the float reference path.
        self.reference: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def qmax(self) -> int:
        """Weights live on [-qmax, qmax]."""
        return weight_qmax(self.weight_bits)

    @property
    def out_features(self) -> int:
        return self.weight_int.shape[0]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the integer kernel sees it, in real units."""
        return fake_quantize_activation(x, self.input_scale, self.input_zero_point, self.act_bits)

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int.dim() - 1)
        return self.weight_int.float() * self.weight_scale.reshape(shape)

    def bias_scale(self) -> torch.Tensor:
        """Scale of the int32 bias grid, per output channel: s_w * s_x (as TFLite)."""
        return self.weight_scale * self.input_scale

    def dequantized_bias(self) -> torch.Tensor:
        return (self.bias_int.double() * self.bias_scale().double()).float()

    def set_weights(self, weight: torch.Tensor, weight_scale: torch.Tensor,
                    bias: torch.Tensor | None, input_scale: float, input_zero_point: int,
                    weight_int: torch.Tensor) -> None:
        self.weight_int.copy_(weight_int)
        self.weight_scale.copy_(weight_scale)
        self.input_scale.fill_(input_scale)
        self.input_zero_point.fill_(input_zero_point)
        if bias is not None:
            self.bias_int.copy_(round_bias(bias, self.bias_scale()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:  # the self-check's float path: same kernel, no rounding
            return self.kernel(x, *self.reference)
        return self.kernel(self.quantize_input(x), self.dequantized_weight(),
                           self.dequantized_bias())

    def kernel(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}, weight={tuple(self.weight_int.shape)}"


def round_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Real bias to the int32 grid of scale s_w * s_x."""
    q = torch.round(bias.double() / scale.double())
    return torch.clamp(q, -INT32_MAX, INT32_MAX).to(torch.int32)


class QuantConv2d(_QuantLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride=1, padding=0, dilation=1, groups: int = 1, weight_bits: int = 8,
                 act_bits: int = 8) -> None:
        shape = (out_channels, in_channels // groups, *kernel_size)
        super().__init__(out_channels, shape, weight_bits, act_bits)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    @classmethod
    def like(cls, conv: nn.Conv2d, weight_bits: int, act_bits: int) -> QuantConv2d:
        if conv.padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode {conv.padding_mode!r} is not supported")
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   conv.padding, conv.dilation, conv.groups, weight_bits, act_bits)

    def kernel(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(_QuantLayer):
    def __init__(self, in_features: int, out_features: int, weight_bits: int = 8,
                 act_bits: int = 8) -> None:
        super().__init__(out_features, (out_features, in_features), weight_bits, act_bits)

    @classmethod
    def like(cls, linear: nn.Linear, weight_bits: int, act_bits: int) -> QuantLinear:
        return cls(linear.in_features, linear.out_features, weight_bits, act_bits)

    def kernel(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def quant_layer_like(module: nn.Module, weight_bits: int, act_bits: int) -> _QuantLayer:
    """An empty quantized layer with the geometry of a float Conv2d / Linear."""
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.like(module, weight_bits, act_bits)
    return QuantLinear.like(module, weight_bits, act_bits)
