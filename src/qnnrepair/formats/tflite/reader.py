"""Parse a .tflite flatbuffer into plain records: tensors, operators, and where each constant
buffer's bytes sit in the file (the writer overwrites exactly those bytes).

Parsing uses the `tflite` package (classes generated from TFLite's schema by flatc); the
flatbuffers runtime does not verify a file, so every read is bounds-checked here and a damaged
file gives one QnnRepairError instead of an IndexError deep in the generated code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qnnrepair.errors import QnnRepairError

try:  # optional extra: pip install "qnnrepair[tflite]"
    import flatbuffers
    import tflite
except ImportError:  # pragma: no cover - exercised only without the extra
    tflite = None

# TensorType codes of schema.fbs that a fully integer model uses, with their numpy dtypes.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16,
          9: np.int8, 10: np.float64}
FLOAT_TYPES = {0, 1, 10}


@dataclass
class Tensor:
    """One tensor of the graph. `data` is the constant's value (None for activations);
    `data_start` is the file offset of its first byte (the writer's target)."""

    index: int
    name: str
    type: int
    shape: tuple[int, ...]
    buffer: int
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0
    data: np.ndarray | None = None
    data_start: int | None = None

    @property
    def dtype(self) -> np.dtype:
        if self.type not in DTYPES:
            raise QnnRepairError(f"tensor {self.name!r} has TFLite type {self.type}, which is not "
                                 "supported: only fully integer models can be read")
        return np.dtype(DTYPES[self.type])

    @property
    def is_float(self) -> bool:
        return self.type in FLOAT_TYPES

    @property
    def is_quantized(self) -> bool:
        return self.scale is not None and len(self.scale) > 0

    def __repr__(self) -> str:
        q = "" if not self.is_quantized else f", scale[{len(self.scale)}]"
        return f"Tensor({self.index}, {self.name!r}, {self.dtype.name}{list(self.shape)}{q})"


@dataclass
class Operator:
    index: int
    op: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Operator({self.index}, {self.op}, in={self.inputs}, out={self.outputs})"


@dataclass
class TFLiteFile:
    """The first subgraph of a .tflite file, decoded."""

    path: str
    size: int
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]

    def __repr__(self) -> str:
        return (f"TFLiteFile({Path(self.path).name!r}, {len(self.operators)} operators, "
                f"{len(self.tensors)} tensors)")


def _require_package() -> None:
    if tflite is None:
        raise QnnRepairError("reading .tflite files needs the optional packages: "
                             "pip install 'qnnrepair[tflite]'")


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def read_tflite(path: str | Path) -> TFLiteFile:
    """Decode `path`; one-line QnnRepairError if it is not a readable TFLite flatbuffer."""
    _require_package()
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise QnnRepairError(f"cannot read {path}: {exc.strerror}") from None
    if len(buf) < 8 or not tflite.Model.ModelBufferHasIdentifier(buf, 0):
        raise QnnRepairError(f"{path} is not a TFLite file (no 'TFL3' identifier): "
                             "pass a .tflite flatbuffer")
    try:
        return _decode(buf, str(path))
    except (IndexError, struct.error, ValueError, TypeError) as exc:
        raise QnnRepairError(f"{path} is truncated or damaged (a part of it lies past its "
                             f"{len(buf)} bytes: {exc}): re-export or re-download it") from None


def _check_range(start: int, length: int, size: int, what: str) -> None:
    if start < 0 or start + length > size:
        raise IndexError(f"{what} ends at byte {start + length}, past the end of the file")


def _decode(buf: bytes, path: str) -> TFLiteFile:
    size = len(buf)
    model = tflite.Model.GetRootAsModel(buf, 0)
    _check_range(model._tab.Pos, 4, size, "the model table")
    if model.SubgraphsLength() < 1:
        raise QnnRepairError(f"{path} has no subgraph: it holds no model")
    op_names = _names(tflite.BuiltinOperator)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"builtin code {code}")
        if code == tflite.BuiltinOperator.CUSTOM:
            name = f"CUSTOM ({(oc.CustomCode() or b'').decode(errors='replace')})"
        codes.append(name)
    graph = model.Subgraphs(0)
    tensors = [_tensor(model, graph.Tensors(i), i, buf) for i in range(graph.TensorsLength())]
    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = codes[op.OpcodeIndex()]
        operators.append(Operator(i, name, [int(t) for t in op.InputsAsNumpy()],
                                  [int(t) for t in op.OutputsAsNumpy()], _options(op, name)))
    return TFLiteFile(path, size, tensors, operators,
                      [int(t) for t in graph.InputsAsNumpy()],
                      [int(t) for t in graph.OutputsAsNumpy()])


def _tensor(model, t, index: int, buf: bytes) -> Tensor:
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    tensor = Tensor(index, (t.Name() or b"").decode(errors="replace"), t.Type(), shape,
                    t.Buffer())
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        tensor.scale = q.ScaleAsNumpy().astype(np.float32)
        tensor.zero_point = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                             else np.zeros(len(tensor.scale), np.int64))
        tensor.quantized_dimension = q.QuantizedDimension()
    if 0 < t.Buffer() < model.BuffersLength() and t.Type() in DTYPES:
        start, length = _buffer_bytes(model.Buffers(t.Buffer()))
        if length:
            _check_range(start, length, len(buf), f"the data of tensor {tensor.name!r}")
            tensor.data_start = start
            raw = np.frombuffer(buf, dtype=np.uint8, count=length, offset=start)
            tensor.data = raw.view(DTYPES[t.Type()]).reshape(shape).copy()
    return tensor


def _buffer_bytes(b) -> tuple[int, int]:
    """(file offset, length) of a buffer's bytes: inside the flatbuffer, or past its end for
    files over 2 GB (the buffer's `offset`/`size` fields)."""
    if b.Offset() > 1:
        return int(b.Offset()), int(b.Size())
    o = flatbuffers.number_types.UOffsetTFlags.py_type(b._tab.Offset(4))
    if o == 0:
        return 0, 0
    return b._tab.Vector(o), b._tab.VectorLen(o)


_ACTIVATIONS = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH",
                5: "SIGN_BIT", 6: "SIGMOID"}


def _options(op, name: str) -> dict:
    """The builtin options the simulation needs, as a plain dict."""
    table = op.BuiltinOptions()
    cls = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
           "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
           "ADD": "AddOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
           "CONCATENATION": "ConcatenationOptions", "SOFTMAX": "SoftmaxOptions",
           "MEAN": "ReducerOptions", "RESHAPE": "ReshapeOptions",
           "SQUEEZE": "SqueezeOptions"}.get(name)
    if cls is None or table is None:
        return {}
    opts = getattr(tflite, cls)()
    opts.Init(table.Bytes, table.Pos)
    out: dict = {}
    for key, getter in [("padding", "Padding"), ("stride_h", "StrideH"), ("stride_w", "StrideW"),
                        ("dilation_h", "DilationHFactor"), ("dilation_w", "DilationWFactor"),
                        ("filter_h", "FilterHeight"), ("filter_w", "FilterWidth"),
                        ("depth_multiplier", "DepthMultiplier"), ("axis", "Axis"),
                        ("beta", "Beta"), ("keep_dims", "KeepDims"),
                        ("keep_num_dims", "KeepNumDims"), ("weights_format", "WeightsFormat")]:
        if hasattr(opts, getter):
            out[key] = getattr(opts, getter)()
    if hasattr(opts, "FusedActivationFunction"):
        out["activation"] = _ACTIVATIONS.get(opts.FusedActivationFunction(), "unknown")
    if "padding" in out:
        out["padding"] = "SAME" if out["padding"] == 0 else "VALID"
    if name == "RESHAPE" and opts.NewShapeLength():
        out["new_shape"] = [int(d) for d in opts.NewShapeAsNumpy()]
    if name == "SQUEEZE":
        out["squeeze_dims"] = ([int(d) for d in opts.SqueezeDimsAsNumpy()]
                               if opts.SqueezeDimsLength() else [])
    return out
