"""A TFLiteFile as a torch graph: the integer simulation and its float reference.

`load_tflite(path)` gives a TFLiteModel: `model` computes like LiteRT, `float_model` is the
same graph with dequantized weights and float activations. Quantized layers have the same
fully qualified names in both (`ops.<operator index>.conv`), so a neuron (name, channel) means
the same unit in each, as in qnnrepair.quantization.QuantizedModel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats import dataflow
from qnnrepair.formats.model import DeployedModel
from qnnrepair.formats.tflite import ops
from qnnrepair.formats.tflite.arithmetic import QRANGE
from qnnrepair.formats.tflite.layers import TFLiteConv2d, TFLiteLinear
from qnnrepair.formats.tflite.reader import DTYPES, Tensor, TFLiteFile, read_tflite

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D",
                 "MAX_POOL_2D", "MEAN", "RESHAPE", "SQUEEZE", "PAD", "SOFTMAX", "QUANTIZE",
                 "DEQUANTIZE", "CONCATENATION")
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Weight layout in the file -> PyTorch (out, in/groups, kh, kw) or (out, in).
_TO_TORCH = {"CONV_2D": (0, 3, 1, 2), "DEPTHWISE_CONV_2D": (3, 0, 1, 2), "FULLY_CONNECTED": (0, 1)}


def _qparams(t: Tensor) -> ops.QParams:
    lo, hi = QRANGE[t.dtype.name]
    return ops.QParams(float(t.scale[0]), int(t.zero_point[0]), lo, hi)


class TFLiteGraph(nn.Module):
    """The operators of one subgraph in file order. Input: the stored integers of the input
    tensor (uint8 pixels), NCHW, any numeric dtype; the file's own scale and zero point turn
    them into real values. Output: the output tensor in real units (dequantized), or with
    `return_logits` set the input of a final SOFTMAX (what a repair compares: softmax outputs
    on a 1/256 grid tie and saturate).

    With autograd on (localization's gradient blame), each step's value stays the integer
    result and its gradient is the float op's at the same input (straight-through): the
    roundings between ops would otherwise stop every gradient.

    When nothing observes a step (no autograd, no hook: evaluation), the integer simulation
    runs on centred integers (`start_values`, `advance`, `finish`): the same integers, several
    times faster."""

    def __init__(self, source: TFLiteFile) -> None:
        super().__init__()
        self.path = source.path
        self.input_index, self.output_index = dataflow.single_input_output(source)
        inp = source.tensors[self.input_index]
        self.input_q = _qparams(inp) if inp.is_quantized and not inp.is_float else None
        self.input_shape = inp.shape
        self.ops = nn.ModuleList()
        self.wiring: list[tuple[list[int], int]] = []  # (activation inputs, output) per op
        self.names: list[str] = []  # the output tensor's name per op, for reports
        # each value's grid (None: a float tensor), for the fast path on centred integers
        self.grids = {i: _grid(source.tensors[i]) for i in [self.input_index]
                      + [op.outputs[0] for op in source.operators]}
        for op in source.operators:
            module, inputs = _build_op(source, op)
            self.ops.append(module)
            self.wiring.append((inputs, op.outputs[0]))
            self.names.append(source.tensors[op.outputs[0]].name)
        self._last_use = dataflow.last_uses(inputs for inputs, _out in self.wiring)
        self.logits_index, self.logits_steps = _logits(source, self.output_index)
        self.return_logits = False

    @property
    def float_mode(self) -> bool:
        return any(getattr(m, "float_mode", False) for m in self.ops)

    @property
    def runs_file_integers(self) -> bool:
        """The file's integer simulation (not its float reference, re-quantized or not)."""
        return not self.float_mode

    def layer_names(self) -> list[str]:
        """Fully qualified names of the quantized layers, in forward order."""
        return [f"ops.{i}.conv" for i, m in enumerate(self.ops) if isinstance(m, ops.ConvOp)]

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stored input integers -> real values, with the input tensor's scale and zero point."""
        x = pixels if pixels.dtype == torch.float32 else pixels.float()  # no Cast in an export
        if self.input_q is None:
            return x
        return (x - self.input_q.zero_point) * self.input_q.scale

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.float_mode and not torch.is_grad_enabled() and not _hooked(self):
            return self.finish(self.start_values(pixels), 0)
        output, n_steps = self._end()
        x = self.preprocess(pixels)
        steps = ((module, inputs, out) for module, (inputs, out)
                 in islice(zip(self.ops, self.wiring), n_steps))
        call = _straight_through if torch.is_grad_enabled() and not self.float_mode else None
        return dataflow.run(steps, {self.input_index: x}, output, self._last_use, call)

    def _end(self) -> tuple[int, int]:
        """The output value and the number of steps that compute it."""
        return ((self.logits_index, self.logits_steps) if self.return_logits
                else (self.output_index, len(self.ops)))

    # The integer simulation on centred integers r = q - z (float32; real values for float
    # tensors), channels-last (exact integer convolutions are fastest so): what evaluation
    # runs, in pieces, so that a candidate changed from step k on can start from the values
    # live at step k (formats/prefix.py).

    def start_values(self, pixels: torch.Tensor) -> dict[int, torch.Tensor]:
        """The values live before the first step: the input, as centred integers."""
        x = self.preprocess(pixels)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        grid = self.grids[self.input_index]
        return {self.input_index: x if grid is None else grid.centred(x)}

    def advance(self, values: dict, start: int, stop: int) -> dict[int, torch.Tensor]:
        """Run steps [start, stop) on the values live at `start`: the values live at `stop`."""
        steps = ((self._integer_step(module, inputs, out), inputs, out) for module, (inputs, out)
                 in islice(zip(self.ops, self.wiring), start, stop))
        return dataflow.run(steps, values, None, self._last_use, start=start)

    def finish(self, values: dict, start: int) -> torch.Tensor:
        """The output (real values) from the values live at step `start`."""
        output, n_steps = self._end()
        r = self.advance(values, start, n_steps)[output]
        grid = self.grids[output]
        return (r if grid is None else grid.real(r)).contiguous()

    def first_changed_step(self, base: TFLiteGraph) -> int:
        """The first step whose integers differ from `base`'s (a graph of the same file);
        the number of steps the output takes when none does."""
        n_steps = self._end()[1]
        for i, (mine, theirs) in enumerate(zip(self.ops[:n_steps], base.ops)):
            if isinstance(mine, ops.ConvOp) and not (
                    torch.equal(mine.conv.weight_int, theirs.conv.weight_int)
                    and torch.equal(mine.conv.bias_int, theirs.conv.bias_int)):
                return i
        return n_steps

    def _integer_step(self, module: ops.TFLiteOp, inputs: list[int], out: int):
        """One op as a function of centred integers: its integer_forward, its forward where it
        only moves values, else its forward on real values with the output made integers."""
        if module.grid_free:
            return module
        if hasattr(module, "integer_forward"):
            return module.integer_forward
        in_grids, out_grid = [self.grids[i] for i in inputs], self.grids[out]

        def through_real_values(*rs: torch.Tensor) -> torch.Tensor:
            y = module(*(r if g is None else g.real(r) for r, g in zip(rs, in_grids)))
            return y if out_grid is None else out_grid.centred(y)
        return through_real_values

    def to_float(self) -> TFLiteGraph:
        """The float reference: dequantized weights and biases in nn.Conv2d / nn.Linear,
        float activations, no rounding anywhere."""
        graph = copy.deepcopy(self)
        for module in graph.ops:
            module.float_mode = True
            if isinstance(module, ops.ConvOp):
                module.conv = _float_layer(module.conv)
        return graph

    def extra_repr(self) -> str:
        return f"{Path(self.path).name}, {len(self.ops)} ops"


def _grid(t: Tensor) -> ops.QParams | None:
    return _qparams(t) if t.is_quantized and not t.is_float else None


def _hooked(graph: nn.Module) -> bool:
    """Whether a hook watches any step (capture, spectrum, blame): they need real values."""
    return bool(nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in graph.modules()))


def _straight_through(module: nn.Module, *xs: torch.Tensor) -> torch.Tensor:
    """One step: the integer op's value with its float version's gradient at the same inputs.
    A ConvOp does this itself (its layer must run once, for the hooks on it)."""
    if isinstance(module, ops.ConvOp) or not any(x.requires_grad for x in xs):
        return module(*xs)
    with torch.no_grad():
        value = module(*xs)
    module.float_mode = True
    try:
        slope = module(*xs)
    finally:
        module.float_mode = False
    return value + (slope - slope.detach())


_PASS_THROUGH = ("DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE")


def _logits(source: TFLiteFile, output: int) -> tuple[int, int]:
    """The tensor a final SOFTMAX reads (through reshapes and (de)quantizations after it) and
    the number of ops up to the one that writes it; the output itself if there is no softmax."""
    producer = {op.outputs[0]: op for op in source.operators}
    tensor = output
    while tensor in producer and producer[tensor].op in _PASS_THROUGH:
        tensor = producer[tensor].inputs[0]
    if tensor not in producer or producer[tensor].op != "SOFTMAX":
        return output, len(source.operators)
    logits = producer[tensor].inputs[0]
    return logits, (producer[logits].index + 1 if logits in producer else 0)


def _float_layer(layer: nn.Module) -> nn.Module:
    w, b = layer.dequantized_weight(), layer.dequantized_bias()
    if isinstance(layer, TFLiteLinear):
        out = nn.Linear(w.shape[1], w.shape[0])
    else:
        out = nn.Conv2d(w.shape[1] * layer.groups, w.shape[0], tuple(w.shape[2:]),
                        layer.stride, 0, layer.dilation, layer.groups)
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out.requires_grad_(False)


def _const(source: TFLiteFile, index: int, what: str) -> np.ndarray:
    t = source.tensors[index]
    if t.data is None:
        raise QnnRepairError(f"{what} (tensor {t.name!r}) is not a constant in the file: "
                             "only constant weights, shapes and axes are supported")
    return t.data


def _check_integer(source: TFLiteFile, op, tensors: list[int]) -> None:
    for index in tensors:
        t = source.tensors[index]
        if t.is_float or not t.is_quantized:
            kind = "a float model" if op.op in _WEIGHTED and t.data is not None else \
                "not fully integer-quantized"
            raise QnnRepairError(
                f"{Path(source.path).name} is {kind}: {op.op} (operator {op.index}) has "
                f"{t.dtype.name if t.type in DTYPES else f'type-{t.type}'} tensor "
                f"{t.name!r}; convert it with full-integer quantization (int8 or uint8)")


def _build_op(source: TFLiteFile, op) -> tuple[nn.Module, list[int]]:
    if op.op not in SUPPORTED_OPS:
        raise QnnRepairError(f"{Path(source.path).name}: operator {op.index} is {op.op}, which "
                             f"qnnrepair cannot simulate (supported: {', '.join(SUPPORTED_OPS)})")
    o, t = op.options, source.tensors
    ins = [i for i in op.inputs if i >= 0]
    out = t[op.outputs[0]]
    if op.op in _WEIGHTED:
        _check_integer(source, op, ins + [op.outputs[0]])
        return _weighted(source, op), [ins[0]]
    if op.op == "QUANTIZE":
        return ops.RequantizeOp(_qparams(out)), [ins[0]]
    if op.op == "DEQUANTIZE":
        return ops.RequantizeOp(None), [ins[0]]
    if op.op in ("RESHAPE", "SQUEEZE"):
        return ops.ReshapeOp(out.shape), [ins[0]]
    if op.op == "PAD":
        pads = _const(source, ins[1], "PAD paddings").reshape(-1, 2).tolist()
        return ops.PadOp([tuple(p) for p in pads]), [ins[0]]
    _check_integer(source, op, [ins[0], op.outputs[0]] + (ins[1:] if op.op in
                                                           ("ADD", "CONCATENATION") else []))
    if op.op == "ADD":
        return ops.AddOp(_qparams(t[ins[0]]), _qparams(t[ins[1]]), _qparams(out),
                         o.get("activation")), ins[:2]
    if op.op in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        kind = "avg" if op.op == "AVERAGE_POOL_2D" else "max"
        return ops.PoolOp(kind, _qparams(t[ins[0]]), _qparams(out),
                          (o["filter_h"], o["filter_w"]), (o["stride_h"], o["stride_w"]),
                          o["padding"], o.get("activation")), [ins[0]]
    if op.op == "MEAN":
        axes = [int(a) for a in np.atleast_1d(_const(source, ins[1], "MEAN axes"))]
        return ops.MeanOp(axes, bool(o.get("keep_dims")), _qparams(t[ins[0]]),
                          _qparams(out)), [ins[0]]
    if op.op == "SOFTMAX":
        return ops.SoftmaxOp(o.get("beta", 1.0), _qparams(t[ins[0]]), _qparams(out)), [ins[0]]
    # CONCATENATION
    return ops.ConcatOp(o["axis"], [_qparams(t[i]) for i in ins], _qparams(out),
                        o.get("activation")), ins


def _weighted(source: TFLiteFile, op) -> ops.ConvOp:
    t, o = source.tensors, op.options
    x, w = t[op.inputs[0]], t[op.inputs[1]]
    b = t[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    out_q = _qparams(t[op.outputs[0]])
    in_q = _qparams(x)
    stored = _const(source, w.index, f"{op.op} weights")
    weight = torch.from_numpy(stored.astype(np.int64)).permute(*_TO_TORCH[op.op]).contiguous()
    n_out = weight.shape[0]
    per_channel = len(w.scale) > 1
    scale = torch.from_numpy(np.broadcast_to(w.scale, (n_out,)).astype(np.float32).copy())
    zp = torch.from_numpy(np.broadcast_to(w.zero_point, (n_out,)).astype(np.int64).copy())
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight_int = weight - zp.reshape(shape)
    bias = (torch.from_numpy(_const(source, b.index, f"{op.op} bias").astype(np.int64))
            if b is not None else torch.zeros(n_out, dtype=torch.int64))
    common = dict(weight_int=weight_int, weight_scale=scale, weight_zero_point=zp, bias_int=bias,
                  input_scale=in_q.scale, input_zero_point=in_q.zero_point,
                  act_range=(in_q.qmin, in_q.qmax), weight_range=QRANGE[w.dtype.name],
                  per_channel=per_channel)
    if op.op == "FULLY_CONNECTED":
        layer = TFLiteLinear(**common)
        module = ops.ConvOp(layer, out_q, o.get("activation"), fully_connected=True)
    else:
        groups = 1 if op.op == "CONV_2D" else x.shape[3]
        stride, dilation = (o["stride_h"], o["stride_w"]), (o["dilation_h"], o["dilation_w"])
        layer = TFLiteConv2d(**common, stride=stride, dilation=dilation, groups=groups)
        module = ops.ConvOp(layer, out_q, o.get("activation"), o["padding"],
                            tuple(weight.shape[2:]), stride, dilation)
    # Where the integers live in the file: the writer's targets.
    layer.weight_tensor, layer.bias_tensor = w.index, (b.index if b is not None else None)
    layer.file_op = op.op
    return module


@dataclass(repr=False)
class TFLiteModel(DeployedModel):
    """A deployed .tflite simulation beside its float reference (see DeployedModel); `path`
    is the .tflite file."""

    model: TFLiteGraph
    float_model: TFLiteGraph
    format_name: ClassVar[str] = "tflite"
    num_classes: int | None = None


def load_tflite(path: str | Path) -> TFLiteModel:
    """Read a fully integer .tflite into its simulation and float reference."""
    source = read_tflite(path)
    graph = TFLiteGraph(source)
    out_shape = source.tensors[graph.output_index].shape
    return TFLiteModel(graph, graph.to_float(), graph.layer_names(), str(path),
                       out_shape[-1] if out_shape else None)
