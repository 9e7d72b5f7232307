"""An ONNX graph as a torch module, and the QDQ model beside its float reference.

`OnnxGraph(read_onnx(path))` interprets the data-path nodes of one file. In a QDQ file, a Conv /
Gemm / MatMul whose weight is a DequantizeLinear of integers becomes a QDQConv2d / QDQLinear
holding those integers; in a float file the same node becomes an nn.Conv2d / nn.Linear. Both
are registered under the node's name (`nodes.<sanitized node name>`), and ONNX Runtime's
quantizer keeps node names, so a neuron (name, channel) means the same unit in the simulation
and its float reference, as in qnnrepair.quantization.QuantizedModel.

`load_onnx_qdq(float_path, qdq_path)` reads both files, checks that the QDQ file is the float
one quantized (match.py), and returns an OnnxQDQModel. How nodes become modules: build.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats import dataflow
from qnnrepair.formats.model import DeployedModel
from qnnrepair.formats.onnx_qdq.build import GraphBuilder
from qnnrepair.formats.onnx_qdq.layers import QDQ_LAYERS, QDQConv2d
from qnnrepair.formats.onnx_qdq.match import check_match
from qnnrepair.formats.onnx_qdq.reader import OnnxFile, read_onnx


class OnnxGraph(nn.Module):
    """The data-path nodes of one ONNX file in topological order. Input: the graph's float
    input (a normalized NCHW batch); output: the graph's output in real units."""

    def __init__(self, source: OnnxFile) -> None:
        super().__init__()
        self.path = source.path
        self.input_name, self.output_name = dataflow.single_input_output(source)
        self.nodes = nn.ModuleDict()
        self.wiring: list[tuple[str, list[str], str]] = []  # (key, data inputs, output)
        self.onnx_names: dict[str, str] = {}  # key -> ONNX node name, for messages
        self._builder = GraphBuilder(source, self)
        for node in source.nodes:
            self._builder.add(node)
        if self.output_name in self._builder.consts:
            raise QnnRepairError(f"{source.path}: the output is a constant: nothing to simulate")
        del self._builder
        self._last_use = dataflow.last_uses(inputs for _key, inputs, _out in self.wiring)
        # Every convolution integer (a QDQ file's): its sums are exact in any memory layout,
        # and channels-last makes them several times faster; float ones keep PyTorch's order.
        convolutions = [m for m in self.nodes.values() if isinstance(m, (nn.Conv2d, QDQConv2d))]
        self.channels_last = bool(convolutions) and all(isinstance(m, QDQConv2d)
                                                        for m in convolutions)

    def layer_names(self) -> list[str]:
        """Fully qualified names of the weighted layers (quantized or float), in forward order."""
        return [f"nodes.{key}" for key, _, _ in self.wiring
                if isinstance(self.nodes[key], (*QDQ_LAYERS, nn.Conv2d, nn.Linear))]

    def quantized_layer_names(self) -> list[str]:
        return [n for n in self.layer_names() if isinstance(self.get_submodule(n), QDQ_LAYERS)]

    @property
    def runs_file_integers(self) -> bool:
        """Every layer with integer weights is the QDQ file's own: false for the float graph,
        and for the float graph re-quantized by qnnrepair's quantizer."""
        integer = [m for m in self.nodes.values() if hasattr(m, "weight_int")]
        return bool(integer) and all(isinstance(m, QDQ_LAYERS) for m in integer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.start_values(x), 0)

    # The pass in pieces, so that a candidate changed from step k on can start from the values
    # live at step k (formats/prefix.py).

    def start_values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The values live before the first step: the input."""
        x = x.float()
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return {self.input_name: x}

    def advance(self, values: dict, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Run steps [start, stop) on the values live at `start`: the values live at `stop`."""
        steps = ((self.nodes[key], inputs, out)
                 for key, inputs, out in islice(self.wiring, start, stop))
        return dataflow.run(steps, values, None, self._last_use, start=start)

    def finish(self, values: dict, start: int) -> torch.Tensor:
        """The graph's output from the values live at step `start`."""
        return self.advance(values, start, len(self.wiring))[self.output_name].contiguous()

    def first_changed_step(self, base: OnnxGraph) -> int:
        """The first step whose integers differ from `base`'s (a graph of the same file);
        the number of steps when none does."""
        for i, (key, _inputs, _out) in enumerate(self.wiring):
            mine, theirs = self.nodes[key], base.nodes[key]
            if isinstance(mine, QDQ_LAYERS) and not (
                    torch.equal(mine.weight_int, theirs.weight_int)
                    and torch.equal(mine.bias_int, theirs.bias_int)):
                return i
        return len(self.wiring)

    def extra_repr(self) -> str:
        return f"{Path(self.path).name}, {len(self.wiring)} nodes"


@dataclass(repr=False)
class OnnxQDQModel(DeployedModel):
    """A QDQ simulation beside its float reference (see DeployedModel); `path` is the QDQ
    file, `float_path` the float model it was quantized from."""

    model: OnnxGraph
    float_model: OnnxGraph
    format_name: ClassVar[str] = "onnx-qdq"
    float_path: str
    num_classes: int | None = None


def _check_shapes(qdq: OnnxFile, model: OnnxGraph, float_model: OnnxGraph,
                  layers: list[str]) -> None:
    """Every quantized layer computes the shape its float twin computes, on one image of the
    file's input shape. A quantizer that wraps a padding's shape arithmetic in Q/DQ (as
    quantize_static does for padding computed in forward) can round a pad of 1 down to 0;
    ONNX Runtime then runs another network than the float one, and no repair should chase it."""
    from qnnrepair.hooks import capture

    dims = qdq.input_shape
    if not dims or any(not d for d in dims):
        return
    x = torch.zeros(1, *dims[1:])
    with torch.no_grad():
        with capture({n: model.get_submodule(n) for n in layers}) as got:
            model(x)
        with capture({n: float_model.get_submodule(n) for n in layers}) as want:
            float_model(x)
    for name in layers:
        a, b = got.get(name), want.get(name)
        if a is not None and b is not None and a.shape != b.shape:
            node = model.onnx_names.get(name.removeprefix("nodes."), name)
            raise QnnRepairError(
                f"{Path(qdq.path).name}: node {node!r} computes shape {tuple(a.shape)} where the "
                f"float model computes {tuple(b.shape)}: the quantizer changed the graph (a "
                "padding computed in forward and quantized by quantize_static rounds "
                "differently); export the float model with fixed padding and quantize again")


def load_onnx_qdq(float_path: str | Path, qdq_path: str | Path) -> OnnxQDQModel:
    """Read a float ONNX model and the QDQ model ONNX Runtime's quantize_static wrote from it:
    the QDQ file's simulation (`model`) and the float file's graph (`float_model`)."""
    qdq = read_onnx(qdq_path)
    if not qdq.is_quantized():
        raise QnnRepairError(f"{qdq_path} has no QuantizeLinear/DequantizeLinear nodes: it is a "
                             "float model; pass the QDQ model that quantize_static wrote")
    flt = read_onnx(float_path)
    if flt.is_quantized():
        raise QnnRepairError(f"{float_path} holds QuantizeLinear/DequantizeLinear nodes: pass "
                             "the float model the QDQ model was quantized from")
    model = OnnxGraph(qdq)
    # A layer whose weight integers the file does not hold as an initializer (quantize_static
    # quantizes a weight the exporter shares between layers at run time, QuantizeLinear of the
    # float weight) is simulated but not repaired: its integers could not be written back.
    layers = [n for n in model.quantized_layer_names()
              if model.get_submodule(n).weight_initializer in qdq.initializers]
    if not layers:
        raise QnnRepairError(f"{qdq_path} has no Conv/Gemm/MatMul with quantized weights: "
                             "quantize it with quantize_static (QuantFormat.QDQ)")
    float_model = OnnxGraph(flt)
    check_match(flt, qdq, float_model, model, layers)
    _check_shapes(qdq, model, float_model, layers)
    shape = qdq.output_shapes[0] if qdq.output_shapes else ()
    num_classes = shape[-1] if shape and shape[-1] else None
    return OnnxQDQModel(model.eval(), float_model.eval(), layers, str(qdq_path), str(float_path),
                        num_classes)
