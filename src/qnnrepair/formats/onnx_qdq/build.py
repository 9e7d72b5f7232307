"""Turning the nodes of an ONNX file into the modules of an OnnxGraph.

Data-path nodes become ops.py modules. A DequantizeLinear of a constant is folded away: it
records the integer initializer behind a weight or bias (ConstantDQ). A Conv / Gemm / MatMul
whose weight is such an initializer becomes a QDQConv2d / QDQLinear holding the integers (its
input must come from a DequantizeLinear of an activation); one with a float weight becomes an
nn.Conv2d / nn.Linear. Every module is keyed by its node's name (node_key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.onnx_qdq import ops
from qnnrepair.formats.onnx_qdq.layers import QDQConv2d, QDQLinear
from qnnrepair.formats.onnx_qdq.reader import Node, OnnxFile, node_key

SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip",
                 "GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool", "Flatten",
                 "Reshape", "Concat", "Pad", "Slice", "Transpose", "Squeeze", "Unsqueeze",
                 "Identity", "Softmax", "QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class ConstantDQ:
    """A DequantizeLinear of a constant: the integer initializer behind a weight or bias."""

    initializer: str
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


class GraphBuilder:
    """Turns nodes into modules; knows which values are constants and which DequantizeLinear
    outputs are integer initializers."""

    def __init__(self, source: OnnxFile, graph: nn.Module) -> None:
        """`graph`: the OnnxGraph being built (its `nodes`, `wiring`, `onnx_names`)."""
        self.source, self.graph = source, graph
        self.consts: dict[str, np.ndarray] = dict(source.constants)
        self.dq: dict[str, ConstantDQ] = {}
        self.producer: dict[str, nn.Module] = {}

    def where(self, node: Node) -> str:
        return f"{Path(self.source.path).name}: {node.label}"

    def const(self, node: Node, i: int, what: str, default=None) -> np.ndarray | None:
        if i >= len(node.inputs) or not node.inputs[i]:
            return default
        name = node.inputs[i]
        if name not in self.consts:
            raise QnnRepairError(f"{self.where(node)}: its {what} ({name!r}) is not a constant; "
                                 "only constant weights, shapes and axes are supported")
        return self.consts[name]

    def add(self, node: Node) -> None:
        if node.op_type not in (*WEIGHTED_OPS, "DequantizeLinear") \
                and not self._data_inputs(node):
            self._fold(node)  # shape arithmetic that a quantizer wrapped in Q/DQ
            return
        if node.op_type not in SUPPORTED_OPS:
            raise QnnRepairError(f"{self.where(node)} is an operator qnnrepair cannot simulate "
                                 f"(supported: {', '.join(SUPPORTED_OPS)})")
        if node.op_type == "DequantizeLinear" and node.inputs[0] in self.consts:
            self._constant_dq(node)
            return
        if node.op_type in WEIGHTED_OPS:
            modules = self._weighted(node)
        else:
            modules = [(node_key(node), self._plain(node), self._data_inputs(node))]
        for i, (key, module, inputs) in enumerate(modules):
            key = self._unique(key)
            self.graph.nodes[key] = module
            out = node.outputs[0] if i == len(modules) - 1 else f"{node.outputs[0]}:{key}"
            if i < len(modules) - 1:  # a helper op in front (the Pad of uneven Conv pads)
                modules[i + 1] = (modules[i + 1][0], modules[i + 1][1], [out])
            self.graph.wiring.append((key, inputs, out))
            self.graph.onnx_names[key] = node.name
            self.producer[out] = module

    def _fold(self, node: Node) -> None:
        """Evaluate a node whose inputs are all constants (ONNX's reference implementation)."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        proto = helper.make_node(node.op_type, node.inputs, node.outputs, **node.attrs)
        feeds = {i: self.consts[i] for i in node.inputs if i}
        try:
            values = ReferenceEvaluator(proto).run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            raise QnnRepairError(f"{self.where(node)}: cannot evaluate it on its constant "
                                 f"inputs ({str(exc).splitlines()[0][:160]})") from None
        for name, value in zip(node.outputs, values):
            self.consts[name] = np.asarray(value)

    def _readers(self, name: str) -> int:
        """How many weighted nodes of the file read the value `name` (Identity read through)."""
        return sum(name in n.inputs for n in self.source.nodes if n.op_type in WEIGHTED_OPS)

    def _unique(self, key: str) -> str:
        base, n = key, 1
        while key in self.graph.nodes:
            n += 1
            key = f"{base}_{n}"
        return key

    def _data_inputs(self, node: Node) -> list[str]:
        return [i for i in node.inputs if i and i not in self.consts]

    def _constant_dq(self, node: Node) -> None:
        q = self.consts[node.inputs[0]]
        scale = np.asarray(self.const(node, 1, "scale"), np.float32)
        zp = self.const(node, 2, "zero point", np.zeros((), q.dtype))
        axis = int(node.attrs.get("axis", 1))
        if q.dtype.name not in ops.QRANGE and q.dtype != np.int32:
            raise QnnRepairError(f"{self.where(node)} dequantizes {q.dtype.name} integers: only "
                                 "int8/uint8 (int16/uint16) weights and int32 biases are supported")
        self.dq[node.outputs[0]] = ConstantDQ(node.inputs[0], q, scale, np.asarray(zp), axis)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = -1
        self.consts[node.outputs[0]] = ((q.astype(np.float32) - np.asarray(zp, np.float32)
                                         .reshape(shape if np.size(zp) > 1 else ()))
                                        * scale.reshape(shape if scale.size > 1 else ()))

    # --- ops without weights -----------------------------------------------------------------

    def _plain(self, node: Node) -> nn.Module:
        op, a = node.op_type, node.attrs
        if op == "QuantizeLinear":
            zp = self.const(node, 2, "zero point", np.zeros((), np.uint8))
            return ops.QuantizeOp(self.const(node, 1, "scale"), zp, int(a.get("axis", 1)))
        if op == "DequantizeLinear":
            return ops.DequantizeOp(self.const(node, 1, "scale"), self.const(node, 2, "zero point"),
                                    int(a.get("axis", 1)))
        if op in ops.Binary.FUNCS:
            data = self._data_inputs(node)
            if len(data) == 2:
                return ops.Binary(op)
            if len(data) != 1:
                raise QnnRepairError(f"{self.where(node)} has no data input")
            const_first = node.inputs[0] in self.consts
            return ops.Binary(op, self.consts[node.inputs[0 if const_first else 1]], const_first)
        if op == "Relu":
            return ops.Relu()
        if op == "Clip":
            lo = self.const(node, 1, "minimum", a.get("min"))
            hi = self.const(node, 2, "maximum", a.get("max"))
            return ops.Clip(None if lo is None else float(lo), None if hi is None else float(hi))
        if op == "GlobalAveragePool":
            return ops.GlobalAveragePool()
        if op == "ReduceMean":  # axes: an attribute before opset 18, an input from it on
            return ops.ReduceMean(self.const(node, 1, "axes", a.get("axes")),
                                  bool(a.get("keepdims", 1)))
        if op in ("AveragePool", "MaxPool"):
            return self._pool(node)
        if op == "Flatten":
            return ops.Flatten(int(a.get("axis", 1)))
        if op == "Reshape":
            shape = self.const(node, 1, "shape")
            return ops.Reshape(shape, bool(a.get("allowzero", 0)),
                               batch=self.source.input_batch == 1 and shape.size > 0
                               and int(shape.reshape(-1)[0]) == 1)
        if op == "Concat":
            return ops.Concat(int(a["axis"]))
        if op == "Pad":
            if a.get("mode", "constant") != "constant":
                raise QnnRepairError(f"{self.where(node)} pads in mode {a['mode']!r}: only "
                                     "constant padding is supported")
            pads = self.const(node, 1, "pads", a.get("pads"))
            value = self.const(node, 2, "constant value", np.zeros(()))
            return ops.Pad(pads, float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0,
                           self.const(node, 3, "axes"))
        if op == "Slice":
            return ops.Slice(self.const(node, 1, "starts"), self.const(node, 2, "ends"),
                             self.const(node, 3, "axes"), self.const(node, 4, "steps"))
        if op == "Transpose":
            return ops.Transpose(a.get("perm"))
        if op == "Squeeze":
            return ops.Squeeze(self.const(node, 1, "axes", a.get("axes")))
        if op == "Unsqueeze":
            return ops.Unsqueeze(self.const(node, 1, "axes", a.get("axes")))
        if op == "Softmax":
            return ops.Softmax(int(a.get("axis", -1)))
        return ops.Identity()

    def _pool(self, node: Node) -> nn.Module:
        a = node.attrs
        kernel = list(a["kernel_shape"])
        if len(kernel) != 2 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or \
                (node.op_type == "AveragePool" and a.get("ceil_mode", 0)):
            raise QnnRepairError(f"{self.where(node)}: only 2-D pooling with explicit pads (and "
                                 "no ceil_mode for averages) is supported")
        return ops.Pool("max" if node.op_type == "MaxPool" else "avg", kernel,
                        a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]),
                        a.get("dilations", [1, 1]), bool(a.get("count_include_pad", 0)),
                        bool(a.get("ceil_mode", 0)))

    # --- Conv / Gemm / MatMul ----------------------------------------------------------------

    def _weighted(self, node: Node) -> list[tuple[str, nn.Module, list[str]]]:
        a, key = node.attrs, node_key(node)
        data = self._data_inputs(node)
        if len(data) != 1 or node.inputs[0] != data[0]:
            raise QnnRepairError(f"{self.where(node)} has {len(data)} non-constant inputs: only "
                                 "a data input times a constant weight is supported")
        weight_name = node.inputs[1]
        self.const(node, 1, "weight")
        bias_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        if bias_name is not None:
            self.const(node, 2, "bias")
        front: list = []
        if node.op_type == "Conv":
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or \
                    self.consts[weight_name].ndim != 4:
                raise QnnRepairError(f"{self.where(node)}: only 2-D convolutions with explicit "
                                     "pads are supported")
            top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
            padding = (top, left)
            if (top, left) != (bottom, right):  # uneven: a Pad in front, the conv pads nothing
                front = [(f"{key}_pad", ops.Pad([0, 0, top, left, 0, 0, bottom, right]),
                          [node.inputs[0]])]
                padding = (0, 0)
            geometry = dict(stride=tuple(a.get("strides", [1, 1])), padding=padding,
                            dilation=tuple(a.get("dilations", [1, 1])),
                            groups=int(a.get("group", 1)))
            transposed = False
        else:
            if node.op_type == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0
                                          or a.get("beta", 1.0) != 1.0):
                raise QnnRepairError(f"{self.where(node)}: only Gemm with transA=0, alpha=1, "
                                     "beta=1 is supported")
            if self.consts[weight_name].ndim != 2:
                raise QnnRepairError(f"{self.where(node)}: the weight must be a matrix")
            geometry = {}
            transposed = node.op_type == "MatMul" or not a.get("transB", 0)
        if weight_name in self.dq:
            layer = self._quantized(node, weight_name, bias_name, geometry, transposed)
        else:
            layer = self._float(node, weight_name, bias_name, geometry, transposed)
        return front + [(key, layer, [node.inputs[0]] if not front else [])]

    def _float(self, node, weight_name, bias_name, geometry, transposed) -> nn.Module:
        w = torch.from_numpy(np.asarray(self.consts[weight_name], np.float32).copy())
        if transposed:
            w = w.t().contiguous()
        n_out = w.shape[0]
        b = (torch.from_numpy(np.asarray(self.consts[bias_name], np.float32).reshape(-1).copy())
             if bias_name else None)
        if node.op_type == "Conv":
            layer = nn.Conv2d(w.shape[1] * geometry["groups"], n_out, tuple(w.shape[2:]),
                              bias=b is not None, **geometry)
        else:
            layer = nn.Linear(w.shape[1], n_out, bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                if b.numel() != n_out:
                    raise QnnRepairError(f"{self.where(node)}: bias of {b.numel()} values for "
                                         f"{n_out} outputs")
                layer.bias.copy_(b)
        return layer.requires_grad_(False)

    def _quantized(self, node, weight_name, bias_name, geometry, transposed) -> nn.Module:
        where = self.where(node)
        source = self.producer.get(node.inputs[0])
        if not isinstance(source, ops.DequantizeOp):
            raise QnnRepairError(f"{where} has quantized weights but its input does not come "
                                 "from a DequantizeLinear: weight-only quantization is not "
                                 "supported")
        if source.scale.numel() != 1:
            raise QnnRepairError(f"{where}: its input is quantized per axis; only per-tensor "
                                 "activations are supported")
        w = self.dq[weight_name]
        if w.q.dtype.name not in ("int8", "uint8"):
            raise QnnRepairError(f"{where}: {w.q.dtype.name} weights are not supported (int8 "
                                 "or uint8)")
        out_axis = 1 if transposed else 0
        n_out = w.q.shape[out_axis]
        if w.scale.size > 1 and w.axis % w.q.ndim != out_axis:
            raise QnnRepairError(f"{where}: weights are quantized along axis {w.axis}, not the "
                                 f"output channels (axis {out_axis})")
        scale = np.broadcast_to(w.scale.reshape(-1), (n_out,)).astype(np.float32)
        zp = np.broadcast_to(w.zero_point.reshape(-1).astype(np.int64), (n_out,))
        stored = torch.from_numpy(w.q.astype(np.int64))
        if transposed:
            stored = stored.t().contiguous()
        shape = (-1,) + (1,) * (stored.dim() - 1)
        weight_int = stored - torch.from_numpy(zp.copy()).reshape(shape)
        in_scale = float(source.scale.reshape(()))
        in_zp = int(source.zero_point.reshape(()))
        if bias_name is None:
            bias_int = torch.zeros(n_out, dtype=torch.int64)
            bias_scale = torch.from_numpy(scale * np.float32(in_scale))
        elif bias_name in self.dq:
            b = self.dq[bias_name]
            if b.q.dtype != np.int32 or np.any(b.zero_point != 0) or b.q.size != n_out:
                raise QnnRepairError(f"{where}: the bias must be {n_out} int32 values with zero "
                                     f"point 0, got {b.q.dtype.name}[{b.q.size}]")
            bias_int = torch.from_numpy(b.q.astype(np.int64).reshape(-1))
            bias_scale = torch.from_numpy(np.broadcast_to(b.scale.reshape(-1), (n_out,))
                                          .astype(np.float32).copy())
        else:
            raise QnnRepairError(f"{where}: its weights are quantized but its bias is float; "
                                 "quantize with QuantizeBias on (ONNX Runtime's default)")
        weight_range = ops.QRANGE[w.q.dtype.name]
        symmetric = (w.q.dtype == np.int8 and not zp.any() and int(w.q.min()) >= -127)
        common = dict(weight_int=weight_int, weight_scale=torch.from_numpy(scale.copy()),
                      weight_zero_point=torch.from_numpy(zp.copy()), bias_int=bias_int,
                      bias_scale=bias_scale, input_scale=in_scale, input_zero_point=in_zp,
                      act_range=(source.qmin, source.qmax), weight_range=weight_range,
                      per_channel=w.scale.size > 1, symmetric=symmetric)
        if node.op_type == "Conv":
            layer = QDQConv2d(**common, **geometry)
        else:
            layer = QDQLinear(**common)
        layer.weight_initializer = w.initializer
        layer.bias_initializer = self.dq[bias_name].initializer if bias_name else None
        # A bias the exporter shares between layers: a repair of one may not move the other's.
        layer.bias_fixed = bias_name is not None and self._readers(bias_name) > 1
        layer.weight_transposed = transposed
        layer.node_name = node.name
        return layer
