"""Read an ONNX file into plain records: the nodes that compute on data, in topological order,
and every constant (initializers, Constant nodes, and shape arithmetic on them).

Exporters write shape computations as small subgraphs of constants (torch writes F.pad's
paddings as ConstantOfShape / Concat / Reshape / Slice / Transpose / Cast). They are evaluated
here once, with ONNX's own reference implementation, so the simulation only has to know the ops
that touch the data. QuantizeLinear / DequantizeLinear are never folded: the integers behind a
DequantizeLinear are what a repair changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from qnnrepair.errors import QnnRepairError

_INSTALL = "install it with: pip install 'qnnrepair[export]'"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Attribute names of torch's ModuleDict, which a module name must not shadow.
_MODULE_DICT_NAMES = frozenset(dir(nn.ModuleDict))
# Domains whose Q/DQ mean the same (ORT writes 16-bit Q/DQ in its own domain).
_DOMAINS = ("", "ai.onnx", "com.microsoft")


def require_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise QnnRepairError(f"reading ONNX files needs the onnx package: {_INSTALL}") from None
    return onnx


@dataclass
class Node:
    """One node: `attrs` holds decoded attribute values (strings as str)."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name the node."""
        return f"{self.op_type} node {self.name!r}" if self.name else \
            f"{self.op_type} node #{self.index}"

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.op_type}, {self.name!r})"


@dataclass
class OnnxFile:
    """The main graph of an ONNX file, decoded. `constants` maps every constant value's name to
    its numpy array; `nodes` are the remaining nodes in topological order; `initializers` names
    the file's own initializers (what a writer may change)."""

    path: str
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    initializers: set[str]
    inputs: list[str]
    outputs: list[str]
    output_shapes: list[tuple]
    opset: int
    input_batch: int | None = None  # the first input's batch dimension, if the file fixes it
    input_shape: tuple = ()  # the first input's shape (0 where not fixed), batch fixed at 1

    def is_quantized(self) -> bool:
        return any(n.op_type in QDQ_OPS for n in self.nodes)

    def __repr__(self) -> str:
        return f"OnnxFile({Path(self.path).name!r}, {len(self.nodes)} nodes)"


def node_key(node: Node) -> str:
    """A module name for the node: its ONNX name (else its first output), with '/' and '.'
    (which PyTorch names cannot hold) turned into '_'."""
    key = re.sub(r"[^0-9A-Za-z_]+", "_", node.name or node.outputs[0]).strip("_") or \
        f"{node.op_type}_{node.index}"
    if key[0].isdigit() or key in _MODULE_DICT_NAMES:
        key = f"node_{key}"
    return key


def load_proto(path: str | Path):
    """The ModelProto of `path`; one-line QnnRepairError if it is missing or not ONNX."""
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise QnnRepairError(f"ONNX file {path} not found")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 (DecodeError, OSError, ValueError ...)
        raise QnnRepairError(f"{path} is truncated or not an ONNX model ({_first_line(exc)}): "
                             "re-export it") from None
    if not proto.graph.node:
        raise QnnRepairError(f"{path} is truncated or not an ONNX model (its graph has no "
                             "nodes): re-export it")
    return proto


def read_onnx(path: str | Path) -> OnnxFile:
    """Decode `path`, fold its constant subgraphs and sort its nodes."""
    onnx = require_onnx()
    from onnx import numpy_helper

    proto = load_proto(path)
    batch = _fix_batch(proto)
    shapes = _static_shapes(proto, onnx)
    unknown = [n.input[0] for n in proto.graph.node
               if n.op_type == "Shape" and shapes.get(n.input[0]) is None]
    if unknown:
        shapes.update(_run_shapes(proto, unknown))
    graph = proto.graph
    try:
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    except Exception as exc:  # noqa: BLE001
        raise QnnRepairError(f"{path} has an unreadable initializer ({_first_line(exc)}): "
                             "re-export it") from None
    initializers = set(constants)
    inputs = [i.name for i in graph.input if i.name not in initializers]
    nodes = _without_identities([_node(i, n, onnx) for i, n in enumerate(graph.node)],
                                {o.name for o in graph.output})
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    ordered = _topological(nodes, set(inputs) | set(constants), str(path))
    kept = []
    for node, proto_node in ordered:
        if node.op_type == "Constant":
            constants[node.outputs[0]] = _constant_value(proto_node, node, path)
        elif node.op_type == "Shape" and shapes.get(node.inputs[0]) is not None:
            shape = shapes[node.inputs[0]]  # known once the batch is fixed at 1
            start, end = node.attrs.get("start", 0), node.attrs.get("end", len(shape))
            constants[node.outputs[0]] = np.asarray(shape[start:end], np.int64)
        elif node.op_type != "DequantizeLinear" and all(not i or i in constants
                                                        for i in node.inputs):
            # a QuantizeLinear of a constant too (ORT quantizes a Mul's constant operand); a
            # DequantizeLinear of one stays: the builder reads weight integers from it
            _fold(proto_node, node, constants, path)
        else:
            kept.append(node)
    output_shapes = [tuple(d.dim_value if d.HasField("dim_value") else None
                           for d in o.type.tensor_type.shape.dim) for o in graph.output]
    return OnnxFile(str(path), kept, constants, initializers, inputs,
                    [o.name for o in graph.output], output_shapes, opset, batch,
                    _input_shape(proto))


def _node(index: int, proto_node, onnx) -> tuple[Node, object]:
    attrs = {}
    for a in proto_node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        attrs[a.name] = value
    node = Node(index, proto_node.name, proto_node.op_type, proto_node.domain,
                list(proto_node.input), list(proto_node.output), attrs)
    if node.domain not in _DOMAINS:
        raise QnnRepairError(f"{node.label} is in domain {node.domain!r}: only standard ONNX "
                             "operators (and ONNX Runtime's Q/DQ) are supported")
    return node, proto_node


def _fix_batch(proto) -> int | None:
    """Fix a dynamic batch dimension of the first input at 1, so that shape arithmetic on it
    (Shape -> Gather -> Concat -> Reshape, as exporters write `x.view(x.size(0), -1)`) folds
    to constants; the simulation then reads a leading 1 of a Reshape as the batch
    (ops.Reshape). Returns the batch the file now has (None: no input shape)."""
    initializers = {t.name for t in proto.graph.initializer}
    first = next((i for i in proto.graph.input if i.name not in initializers), None)
    dims = first.type.tensor_type.shape.dim if first is not None else []
    if not len(dims):
        return None
    if not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
        dims[0].Clear()
        dims[0].dim_value = 1
    return dims[0].dim_value


def _static_shapes(proto, onnx) -> dict[str, tuple | None]:
    """Every value's shape where ONNX shape inference knows all of it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 (inference is a help here, not a requirement)
        return {}
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        known = value.type.tensor_type.HasField("shape") and all(
            d.HasField("dim_value") for d in dims)
        shapes[value.name] = tuple(d.dim_value for d in dims) if known else None
    return shapes


def _input_shape(proto) -> tuple:
    initializers = {t.name for t in proto.graph.initializer}
    first = next((i for i in proto.graph.input if i.name not in initializers), None)
    return tuple(d.dim_value for d in first.type.tensor_type.shape.dim) if first else ()


def _run_shapes(proto, names: list[str]) -> dict[str, tuple]:
    """The shapes of `names` as ONNX Runtime computes them on one zero image: for a Shape node
    whose input shape inference cannot follow (a padding computed through Q/DQ nodes). Empty
    when ONNX Runtime is missing or the input's shape is not fixed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    initializers = {t.name for t in proto.graph.initializer}
    first = next(i for i in proto.graph.input if i.name not in initializers)
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim]
    if not dims or min(dims) <= 0:
        return {}
    probe = type(proto)()
    probe.CopyFrom(proto)
    from onnx import helper

    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names)
                              if n not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        elem = {1: np.float32, 2: np.uint8, 3: np.int8}.get(first.type.tensor_type.elem_type,
                                                            np.float32)
        outputs = session.run(names, {first.name: np.zeros(dims, elem)})
    except Exception:  # noqa: BLE001 (the shapes are a help; the builder reports what is missing)
        return {}
    return {name: tuple(np.asarray(value).shape) for name, value in zip(names, outputs)}


def _without_identities(nodes, graph_outputs: set[str]):
    """Identity nodes removed, their readers reading the Identity's input: exporters feed
    shared constants through them (torch stores equal biases once, so a second layer's bias
    reaches its Conv through an Identity of the first's DequantizeLinear)."""
    alias = {}
    kept = []
    for node, proto_node in nodes:
        if node.op_type == "Identity" and node.outputs[0] not in graph_outputs:
            alias[node.outputs[0]] = node.inputs[0]
        else:
            kept.append((node, proto_node))

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for node, _ in kept:
        node.inputs = [resolve(i) for i in node.inputs]
    return kept


def _topological(nodes, available: set[str], path: str):
    """Kahn's order, stable with respect to the file's order."""
    available = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [p for p in pending if all(i in available for i in p[0].inputs)]
        if not ready:
            node = pending[0][0]
            missing = [i for i in node.inputs if i not in available]
            raise QnnRepairError(f"{path}: {node.label} reads {missing[0]!r}, which no node or "
                                 "initializer produces (a cycle or a damaged file)")
        ready_ids = {id(p) for p in ready}
        pending = [p for p in pending if id(p) not in ready_ids]
        for p in ready:
            ordered.append(p)
            available.update(p[0].outputs)
    return ordered


def _constant_value(proto_node, node: Node, path) -> np.ndarray:
    return _evaluate(proto_node, node, {}, path)[0]


def _fold(proto_node, node: Node, constants: dict, path) -> None:
    # by the proto's own input names (node.inputs may read through removed Identities)
    feeds = {name: constants[i] for name, i in zip(proto_node.input, node.inputs) if name}
    for name, value in zip(node.outputs, _evaluate(proto_node, node, feeds, path)):
        constants[name] = value


def _evaluate(proto_node, node: Node, feeds: dict, path) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    try:
        return [np.asarray(v) for v in ReferenceEvaluator(proto_node).run(None, feeds)]
    except Exception as exc:  # noqa: BLE001
        raise QnnRepairError(f"{path}: cannot evaluate the constant {node.label} "
                             f"({_first_line(exc)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
