"""Integer arithmetic of LiteRT's CPU kernels, on torch tensors.

LiteRT runs a fully integer model through its default XNNPACK delegate (convolutions, adds,
means) and its builtin kernels (pooling, softmax). Their rounding is what decides agreement:
on MobileNetV2 LiteRT's own builtin, XNNPACK and reference kernels disagree on the top-1 class
of 2-6 % of images, because one-step differences compound over 60 layers. So each rule below
copies one kernel family, and says which:

- XNNPACK "fp32" requantization (conv, depthwise, fully connected, mean): the int32
  accumulator times a float32 scale, rounded half to even, plus the output zero point.
- XNNPACK add: fixed-point multipliers with 20 significant bits (see `xnnpack_add`).
- TFLite builtin average pool: integer mean rounded half away from zero.
- TFLite builtin softmax: float exp table, output rounded half up.
"""

from __future__ import annotations

import numpy as np
import torch

# Integer range of each activation type (by numpy dtype name).
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767)}


def f32(x: float) -> float:
    """Round a Python float to float32, as C code computing in `float` does."""
    return float(np.float32(x))


def requant_scale(input_scale: float, weight_scale: np.ndarray, output_scale: float
                  ) -> np.ndarray:
    """XNNPACK's requantization scale, evaluated in float32 in its order:
    input_scale * kernel_scale / output_scale."""
    s = np.float32(input_scale) * np.asarray(weight_scale, np.float32)
    return (s / np.float32(output_scale)).astype(np.float32)


def requantize_fp32(acc: torch.Tensor, scale: torch.Tensor, zero_point: int, lo: int, hi: int
                    ) -> torch.Tensor:
    """XNNPACK fp32 requantization of an integer-valued accumulator (float64 or int tensor):
    float32(acc) * scale, clamped to [lo - zp, hi - zp], rounded half to even, plus zp.
    `scale` broadcasts against `acc` (per channel: shape (C, 1, 1))."""
    y = acc.to(torch.float32).mul_(scale.to(torch.float32))
    y.clamp_(lo - zero_point, hi - zero_point).round_()  # round_: half to even, like lrintf
    return y.add_(zero_point)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """std::round / TfLiteRound."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def activation_range(activation: str | None, scale: float, zero_point: int, dtype: str
                     ) -> tuple[int, int]:
    """Integer clamp of a fused activation (TFLite CalculateActivationRangeQuantized)."""
    lo, hi = QRANGE[dtype]
    def q(v: float) -> int:
        return zero_point + int(round_half_away(torch.tensor(v / scale)).item())
    if activation is None:
        return lo, hi
    if activation == "RELU":
        return max(lo, q(0.0)), hi
    if activation == "RELU6":
        return max(lo, q(0.0)), min(hi, q(6.0))
    if activation == "RELU_N1_TO_1":
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise ValueError(f"fused activation {activation}")


def float_activation(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The same fused activation in real units (the float reference)."""
    if activation is None:
        return x
    if activation == "RELU":
        return torch.relu(x)
    if activation == "RELU6":
        return torch.clamp(x, 0.0, 6.0)
    if activation == "RELU_N1_TO_1":
        return torch.clamp(x, -1.0, 1.0)
    raise ValueError(f"fused activation {activation}")


def xnnpack_add(qa: torch.Tensor, za: int, sa: float, qb: torch.Tensor, zb: int, sb: float,
                zo: int, so: float, lo: int, hi: int) -> torch.Tensor:
    """XNNPACK's quantized add (xnn_init_q*_add_minmax_params + the scalar vadd kernel) of
    stored integers: see xnnpack_add_centred."""
    return xnnpack_add_centred(qa.to(torch.int64) - za, sa, qb.to(torch.int64) - zb, sb, so,
                               lo - zo, hi - zo) + zo


def xnnpack_add_centred(ra: torch.Tensor, sa: float, rb: torch.Tensor, sb: float, so: float,
                        lo: int, hi: int, max_abs: int = 2**16) -> torch.Tensor:
    """XNNPACK's quantized add on centred integers r = q - z, returning the centred output
    clamped to [lo, hi] (int32 or int64; `max_abs` bounds |ra| and |rb|): each input's scale
    relative to the output becomes an integer multiplier, the larger one about 21 bits; the
    sum is shifted right with round-half-up.
    (XNNPACK folds the zero points into one bias; on centred integers they cancel.)"""
    a_scale, b_scale = f32(f32(sa) / f32(so)), f32(f32(sb) / f32(so))
    max_scale = max(abs(a_scale), abs(b_scale))
    exponent = int(np.float32(max_scale).view(np.uint32) >> 23) - 127
    shift = 20 - exponent
    a_mult = int(np.rint(np.float32(a_scale) * np.float32(2.0**shift)))
    b_mult = int(np.rint(np.float32(b_scale) * np.float32(2.0**shift)))
    # int32 holds the sum for 8-bit inputs (|r| <= 255, multipliers below 2^21) and moves
    # half the bytes of int64
    bound = max_abs * (abs(a_mult) + abs(b_mult)) + (1 << (shift - 1))
    dtype = torch.int32 if bound < 2**31 else torch.int64
    acc = ra.to(dtype, copy=True).mul_(a_mult)
    acc.add_(rb.to(dtype), alpha=b_mult).add_(1 << (shift - 1))
    return acc.bitwise_right_shift_(shift).clamp_(lo, hi)


def average_pool_round(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """TFLite builtin quantized average pool: integer sum / count rounded half away from zero."""
    half = torch.div(count, 2, rounding_mode="floor")
    pos = torch.div(total + half, count, rounding_mode="trunc")
    neg = torch.div(total - half, count, rounding_mode="trunc")
    return torch.where(total >= 0, pos, neg)


def softmax_quantized(q: torch.Tensor, input_scale: float, beta: float, zo: int, so: float,
                      lo: int, hi: int, dim: int = -1) -> torch.Tensor:
    """TFLite builtin softmax for 8-bit tensors (lookup table of float exps): probabilities
    times 1/(sum * output_scale), rounded half up, plus the output zero point."""
    diff = (q - q.amax(dim=dim, keepdim=True)).to(torch.float32)
    e = torch.exp(diff * f32(f32(input_scale) * f32(beta)))
    inv = 1.0 / (e.sum(dim=dim, keepdim=True) * f32(so))
    return torch.clamp(torch.floor(e * inv + 0.5) + zo, lo, hi)

