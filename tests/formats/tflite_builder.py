"""Build tiny fully integer .tflite files in memory, for tests that must not need downloads.

`tiny_model(kind)` makes a small network that uses every operator the simulation supports
(QUANTIZE, CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD, MAX_POOL_2D, AVERAGE_POOL_2D, CONCATENATION,
MEAN, RESHAPE, SQUEEZE, FULLY_CONNECTED, SOFTMAX, DEQUANTIZE) with random integer weights,
int8 per-channel ("int8") or uint8 per-tensor with weight zero points ("uint8").
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import tflite

_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int8": 9}
_ACT = {None: 0, "RELU": 1, "RELU6": 3}


class ModelBuilder:
    def __init__(self) -> None:
        self.tensors: list[dict] = []
        self.buffers: list[bytes] = [b""]
        self.ops: list[tuple] = []
        self.codes: list[int] = []

    def tensor(self, shape, dtype: str, scale=None, zero_point=None, qdim: int = 0,
               data: np.ndarray | None = None) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data.astype(dtype)).tobytes())
            buffer = len(self.buffers) - 1
        self.tensors.append(dict(shape=list(shape), dtype=dtype, buffer=buffer,
                                 scale=None if scale is None else np.atleast_1d(scale),
                                 zp=None if zero_point is None else np.atleast_1d(zero_point),
                                 qdim=qdim, name=f"t{len(self.tensors)}"))
        return len(self.tensors) - 1

    def op(self, code: str, inputs, outputs, options: str | None = None, **fields) -> None:
        c = getattr(tflite.BuiltinOperator, code)
        if c not in self.codes:
            self.codes.append(c)
        self.ops.append((self.codes.index(c), list(inputs), list(outputs), options, fields))

    def build(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)
        buffers = []
        for raw in self.buffers:
            data = b.CreateNumpyVector(np.frombuffer(raw, np.uint8)) if raw else None
            tflite.BufferStart(b)
            if data is not None:
                tflite.BufferAddData(b, data)
            buffers.append(tflite.BufferEnd(b))
        tensors = []
        for t in self.tensors:
            name = b.CreateString(t["name"])
            shape = b.CreateNumpyVector(np.array(t["shape"], np.int32))
            quant = None
            if t["scale"] is not None:
                scale = b.CreateNumpyVector(t["scale"].astype(np.float32))
                zp = b.CreateNumpyVector(t["zp"].astype(np.int64))
                tflite.QuantizationParametersStart(b)
                tflite.QuantizationParametersAddScale(b, scale)
                tflite.QuantizationParametersAddZeroPoint(b, zp)
                tflite.QuantizationParametersAddQuantizedDimension(b, t["qdim"])
                quant = tflite.QuantizationParametersEnd(b)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            tflite.TensorAddType(b, _TYPES[t["dtype"]])
            tflite.TensorAddBuffer(b, t["buffer"])
            tflite.TensorAddName(b, name)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            tensors.append(tflite.TensorEnd(b))
        operators = []
        for code, ins, outs, options, fields in self.ops:
            opts = None
            if options is not None:
                for key, value in fields.items():
                    if isinstance(value, list):
                        fields[key] = b.CreateNumpyVector(np.array(value, np.int32))
                getattr(tflite, f"{options}Start")(b)
                for key, value in fields.items():
                    getattr(tflite, f"{options}Add{key}")(b, value)
                opts = getattr(tflite, f"{options}End")(b)
            i = b.CreateNumpyVector(np.array(ins, np.int32))
            o = b.CreateNumpyVector(np.array(outs, np.int32))
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, code)
            tflite.OperatorAddInputs(b, i)
            tflite.OperatorAddOutputs(b, o)
            if opts is not None:
                tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, options))
                tflite.OperatorAddBuiltinOptions(b, opts)
            operators.append(tflite.OperatorEnd(b))
        codes = []
        for c in self.codes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, 127))
            tflite.OperatorCodeAddBuiltinCode(b, c)
            tflite.OperatorCodeAddVersion(b, 1)
            codes.append(tflite.OperatorCodeEnd(b))

        def vector(start, items):
            start(b, len(items))
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            return b.EndVector()

        t_vec = vector(tflite.SubGraphStartTensorsVector, tensors)
        o_vec = vector(tflite.SubGraphStartOperatorsVector, operators)
        in_vec = b.CreateNumpyVector(np.array(inputs, np.int32))
        out_vec = b.CreateNumpyVector(np.array(outputs, np.int32))
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, t_vec)
        tflite.SubGraphAddOperators(b, o_vec)
        tflite.SubGraphAddInputs(b, in_vec)
        tflite.SubGraphAddOutputs(b, out_vec)
        subgraph = tflite.SubGraphEnd(b)
        sg_vec = vector(tflite.ModelStartSubgraphsVector, [subgraph])
        c_vec = vector(tflite.ModelStartOperatorCodesVector, codes)
        b_vec = vector(tflite.ModelStartBuffersVector, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, c_vec)
        tflite.ModelAddSubgraphs(b, sg_vec)
        tflite.ModelAddBuffers(b, b_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def tiny_model(kind: str = "int8", seed: int = 0, float_weights: bool = False,
               extra_op: str | None = None) -> bytes:
    """A small image classifier: uint8 8x8x3 in, 5 probabilities out (uint8)."""
    rng = np.random.default_rng(seed)
    m = ModelBuilder()
    act = "int8" if kind == "int8" else "uint8"
    lo = -128 if act == "int8" else 0

    def a(shape, scale, zp_real_zero=None):  # activation tensor
        zp = lo + 128 if zp_real_zero is None else zp_real_zero
        return m.tensor(shape, act, scale, zp)

    def weights(shape, out_axis, fan_in, in_scale):
        n_out = shape[out_axis]
        if kind == "int8":
            q = rng.integers(-127, 128, size=shape)
            s = (rng.uniform(0.5, 1.5, n_out) / (127 * np.sqrt(fan_in))).astype(np.float32)
            w = m.tensor(shape, "int8", s, np.zeros(n_out, np.int64), qdim=out_axis, data=q)
        else:
            zp = int(rng.integers(100, 156))
            q = rng.integers(0, 256, size=shape)
            s = np.float32(1.0 / (127 * np.sqrt(fan_in)))
            w = m.tensor(shape, "uint8", s, zp, data=q)
        bias_scale = np.atleast_1d(np.float32(in_scale) * s).astype(np.float32)
        bq = rng.integers(-2000, 2000, size=n_out)
        bias = m.tensor([n_out], "int32", bias_scale, np.zeros(len(bias_scale), np.int64),
                        data=bq)
        return w, bias

    pixels = m.tensor([1, 8, 8, 3], "uint8", 1 / 128, 128)
    if kind == "int8":
        x = m.tensor([1, 8, 8, 3], "int8", 1 / 128, 0)
        m.op("QUANTIZE", [pixels], [x])
    else:
        x = pixels
    in_scale = 1 / 128
    if float_weights:
        w = m.tensor([4, 3, 3, 3], "float32", data=rng.normal(size=(4, 3, 3, 3)))
    else:
        w, bias = weights([4, 3, 3, 3], 0, 27, in_scale)
    c1 = a([1, 4, 4, 4], 0.02, lo)
    m.op("CONV_2D", [x, w, bias] if not float_weights else [x, w, -1], [c1], "Conv2DOptions",
         Padding=0, StrideH=2, StrideW=2, FusedActivationFunction=_ACT["RELU6"])
    w, bias = weights([1, 3, 3, 8], 3, 9, 0.02)  # depthwise, multiplier 2
    d1 = a([1, 4, 4, 8], 0.03)
    m.op("DEPTHWISE_CONV_2D", [c1, w, bias], [d1], "DepthwiseConv2DOptions",
         Padding=0, StrideH=1, StrideW=1, DepthMultiplier=2, FusedActivationFunction=0)
    w, bias = weights([8, 1, 1, 4], 0, 4, 0.02)
    p1 = a([1, 4, 4, 8], 0.025)
    m.op("CONV_2D", [c1, w, bias], [p1], "Conv2DOptions", Padding=1, StrideH=1, StrideW=1)
    s1 = a([1, 4, 4, 8], 0.04)
    m.op("ADD", [d1, p1], [s1], "AddOptions", FusedActivationFunction=_ACT["RELU"])
    pads = m.tensor([4, 2], "int32", data=np.array([[0, 0], [1, 1], [0, 1], [0, 0]]))
    padded = a([1, 6, 5, 8], 0.04)
    m.op("PAD", [s1, pads], [padded])
    mp = a([1, 3, 3, 8], 0.04)
    m.op("MAX_POOL_2D", [padded, ], [mp], "Pool2DOptions", Padding=0, StrideH=2, StrideW=2,
         FilterHeight=2, FilterWidth=2)
    ap = a([1, 3, 3, 8], 0.04)
    m.op("AVERAGE_POOL_2D", [padded], [ap], "Pool2DOptions", Padding=0, StrideH=2, StrideW=2,
         FilterHeight=3, FilterWidth=3)
    cat = a([1, 3, 3, 16], 0.04)  # XNNPACK refuses to prepare a concat of other grids
    m.op("CONCATENATION", [mp, ap], [cat], "ConcatenationOptions", Axis=3)
    axes = m.tensor([2], "int32", data=np.array([1, 2]))
    mean = a([1, 1, 1, 16], 0.03)
    m.op("MEAN", [cat, axes], [mean], "ReducerOptions", KeepDims=True)
    flat = a([1, 16], 0.03)
    m.op("SQUEEZE", [mean], [flat], "SqueezeOptions", SqueezeDims=[1, 2])
    w, bias = weights([5, 16], 0, 1, 0.03)  # large weights: logits spread out
    logits = a([1, 5], 0.05)
    m.op("FULLY_CONNECTED", [flat, w, bias], [logits], "FullyConnectedOptions")
    shaped = a([1, 5], 0.05)
    shape = m.tensor([2], "int32", data=np.array([1, 5]))
    m.op("RESHAPE", [logits, shape], [shaped])
    probs = m.tensor([1, 5], act, 1 / 256, lo)
    m.op("SOFTMAX", [shaped], [probs], "SoftmaxOptions", Beta=1.0)
    out = probs
    if extra_op is not None:  # an operator the simulation does not support
        out = m.tensor([1, 5], act, 1 / 256, lo)
        m.op(extra_op, [probs], [out])
    final = m.tensor([1, 5], "float32")
    m.op("DEQUANTIZE", [out], [final])
    return m.build([pixels], [final])


def differing_bytes(original, written, layers=None) -> tuple[set[int], set[int]]:
    """Offsets where `written` differs from the .tflite file `original`, and the offsets of
    the weight and bias buffers of `layers` (default: every quantized layer) in it."""
    from qnnrepair.formats.tflite import load_tflite, read_tflite

    source, model = read_tflite(original), load_tflite(original)
    allowed = set()
    for name in model.layers if layers is None else layers:
        layer = model.layer(name)
        for index in (layer.weight_tensor, layer.bias_tensor):
            if index is not None:
                t = source.tensors[index]
                allowed.update(range(t.data_start, t.data_start + t.data.nbytes))
    a = np.frombuffer(Path(original).read_bytes(), np.uint8)
    b = np.frombuffer(Path(written).read_bytes(), np.uint8)
    assert len(a) == len(b), "the written file has another length"
    return set(np.flatnonzero(a != b).tolist()), allowed
