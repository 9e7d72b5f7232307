"""One nn.Module per ONNX operator that touches data (constants are folded by the reader).

Values are float32 tensors in ONNX's own layout (NCHW). QuantizeLinear hands on the integers
as float32 values holding integers, DequantizeLinear turns them back into real units, both in
float32 as ONNX Runtime's CPU kernels compute them: q = saturate(round_half_even(x / s) + z),
x = (q - z) * s. Every other op computes in float32, as ONNX Runtime does when it runs the QDQ
graph as written (no graph optimizations).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Integer range of each quantized type, by numpy dtype name.
QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _axis_shape(scale: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    if scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return scale.reshape(shape)


class QuantizeOp(nn.Module):
    """QuantizeLinear: real -> integers of the zero point's type (saturating)."""

    def __init__(self, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> None:
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, np.float32).copy()))
        self.register_buffer("zero_point", torch.from_numpy(
            np.asarray(zero_point).astype(np.float32)))
        self.axis = axis
        self.qmin, self.qmax = QRANGE[np.asarray(zero_point).dtype.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = _axis_shape(self.scale, self.axis, x.dim())
        z = _axis_shape(self.zero_point, self.axis, x.dim())
        v = x.float() / s
        if v.requires_grad:  # straight-through (localization's gradient): rounding has none
            return torch.clamp(v + (torch.round(v) - v).detach() + z, self.qmin, self.qmax)
        return v.round_().add_(z).clamp_(self.qmin, self.qmax)  # v is new: in place

    def extra_repr(self) -> str:
        return f"grid=[{self.qmin}, {self.qmax}], per_axis={self.scale.numel() > 1}"


class DequantizeOp(nn.Module):
    """DequantizeLinear of an activation: integers -> real units. `qmin`, `qmax`: the grid of
    the zero point's type (what a layer reading this value sees)."""

    def __init__(self, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> None:
        super().__init__()
        self.qmin, self.qmax = QRANGE[np.asarray(zero_point).dtype.name if zero_point is not None
                                      else "uint8"]
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, np.float32).copy()))
        z = np.zeros(1, np.float32) if zero_point is None else np.asarray(zero_point, np.float32)
        self.register_buffer("zero_point", torch.from_numpy(z.copy()))
        self.axis = axis

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        s = _axis_shape(self.scale, self.axis, q.dim())
        z = _axis_shape(self.zero_point, self.axis, q.dim())
        return (q.float() - z).mul_(s)


class Binary(nn.Module):
    """Add / Sub / Mul / Div; a constant operand is held as a buffer (`const_first` says which
    side it is on)."""

    FUNCS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}

    def __init__(self, op: str, const: np.ndarray | None = None, const_first: bool = False):
        super().__init__()
        self.op, self.const_first = op, const_first
        self.register_buffer("const", None if const is None else
                             torch.from_numpy(np.asarray(const, np.float32).copy()))

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.const is not None:
            a, b = (self.const, a) if self.const_first else (a, self.const)
        return self.FUNCS[self.op](a, b)

    def extra_repr(self) -> str:
        return self.op


class Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class Clip(nn.Module):
    def __init__(self, lo: float | None, hi: float | None) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"[{self.lo}, {self.hi}]"


class GlobalAveragePool(nn.Module):
    """Means in NCHW order (contiguous first): the float32 sum's order decides ties."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous().mean(dim=tuple(range(2, x.dim())), keepdim=True)


class ReduceMean(nn.Module):
    """ReduceMean over constant axes (all axes when none are given)."""

    def __init__(self, axes, keepdims: bool) -> None:
        super().__init__()
        self.axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(x.dim())) if self.axes is None else tuple(a % x.dim() for a in self.axes)
        return x.contiguous().mean(dim=axes, keepdim=self.keepdims)  # NCHW order, as above


class Pool(nn.Module):
    """AveragePool / MaxPool (2-D). ONNX pads are [top, left, bottom, right].

    The average sums each window column by column (down each column, then across the columns),
    in float32, and divides by the count: the order of ONNX Runtime's CPU kernel (MLAS), which
    matters because window sums of grid values land on the next grid's half steps (measured:
    torch's avg_pool2d order differs from ORT in 38 % of 2x2 outputs, this order in none).
    """

    def __init__(self, kind: str, kernel, strides, pads, dilations=(1, 1),
                 count_include_pad: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kind, self.kernel, self.strides = kind, tuple(kernel), tuple(strides)
        self.pads, self.dilations = tuple(pads), tuple(dilations)
        self.count_include_pad, self.ceil_mode = count_include_pad, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, bottom, right = self.pads
        if self.kind == "max":
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            return F.max_pool2d(x, self.kernel, self.strides, 0, self.dilations,
                                ceil_mode=self.ceil_mode)
        total = self._column_sums(F.pad(x, (left, right, top, bottom)))
        if self.count_include_pad:
            return total / float(self.kernel[0] * self.kernel[1])
        ones = F.pad(torch.ones_like(x[:1, :1]), (left, right, top, bottom))
        return total / self._column_sums(ones)

    def _column_sums(self, padded: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel, self.strides
        out_h = (padded.shape[2] - kh) // sh + 1
        out_w = (padded.shape[3] - kw) // sw + 1

        def shifted(i: int, j: int) -> torch.Tensor:
            return padded[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]

        total = None
        for j in range(kw):
            column = shifted(0, j)
            for i in range(1, kh):
                column = column + shifted(i, j)
            total = column if total is None else total + column
        return total

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel={self.kernel}, strides={self.strides}, pads={self.pads}"


class Flatten(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis % x.dim() if x.dim() else 0
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


class Reshape(nn.Module):
    """Reshape to a constant shape (0 copies the input's dimension unless allowzero).

    `batch`: the shape's first entry is the batch of a file exported for one image (its
    input's batch fixed at 1, the shape written as [1, ...]); the simulation runs many images
    at once, so that entry follows the input's batch instead."""

    def __init__(self, shape: np.ndarray, allowzero: bool = False, batch: bool = False) -> None:
        super().__init__()
        self.shape, self.allowzero = [int(d) for d in np.asarray(shape).reshape(-1)], allowzero
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[i] if d == 0 and not self.allowzero else d
                 for i, d in enumerate(self.shape)]
        if self.batch:
            shape[0] = x.shape[0]
        return x.reshape(shape)


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class Pad(nn.Module):
    """Constant Pad; ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...]."""

    def __init__(self, pads: np.ndarray, value: float = 0.0, axes=None) -> None:
        super().__init__()
        self.pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        self.value, self.axes = value, None if axes is None else [int(a) for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = list(range(x.dim())) if self.axes is None else [a % x.dim() for a in self.axes]
        n = len(axes)
        begin, end = self.pads[:n], self.pads[n:]
        widths = [0] * (2 * x.dim())
        for a, b, e in zip(axes, begin, end):
            widths[2 * (x.dim() - 1 - a)], widths[2 * (x.dim() - 1 - a) + 1] = b, e
        return F.pad(x, widths, value=self.value)


class Slice(nn.Module):
    def __init__(self, starts, ends, axes, steps) -> None:
        super().__init__()
        self.starts, self.ends = [int(v) for v in starts], [int(v) for v in ends]
        self.axes = None if axes is None else [int(v) for v in axes]
        self.steps = [1] * len(self.starts) if steps is None else [int(v) for v in steps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = range(len(self.starts)) if self.axes is None else self.axes
        index: list = [slice(None)] * x.dim()
        for a, start, end, step in zip(axes, self.starts, self.ends, self.steps):
            a = a % x.dim()
            size = x.shape[a]
            if step > 0:
                index[a] = slice(*slice(start, end, step).indices(size))
            else:  # negative steps: slice the reversed axis (torch has no negative steps)
                lo, hi, st = slice(start, end, step).indices(size)
                picked = list(range(lo, hi, st))
                index[a] = torch.tensor(picked, dtype=torch.long)
        out = x
        for a, ix in enumerate(index):
            if isinstance(ix, torch.Tensor):
                out = out.index_select(a, ix)
            else:
                out = out[(slice(None),) * a + (ix,)]
        return out


class Transpose(nn.Module):
    def __init__(self, perm) -> None:
        super().__init__()
        self.perm = None if perm is None else [int(p) for p in perm]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        perm = self.perm or list(reversed(range(x.dim())))
        return x.permute(*perm)


class Squeeze(nn.Module):
    def __init__(self, axes) -> None:
        super().__init__()
        self.axes = None if axes is None else [int(a) for a in axes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axes is None:
            return x.squeeze()
        return x.squeeze(tuple(a % x.dim() for a in self.axes))


class Unsqueeze(nn.Module):
    def __init__(self, axes) -> None:
        super().__init__()
        self.axes = sorted(int(a) for a in axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() + len(self.axes)
        for a in sorted(a % rank for a in self.axes):
            x = x.unsqueeze(a)
        return x


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Softmax(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)
