"""Before any repair: does the simulation compute what ONNX Runtime computes, node by node?

Both graphs of a QDQ model (the float one and the quantized one) run in ONNX Runtime with its
graph optimizations off (so every node's output keeps its name) and in the simulation, on a few
of the user's images; the first node whose output has another shape, or other values beyond the
known rounding, is named in one line. The known rounding: ONNX Runtime sums float32 products in
its own order, so a value at a half step may round to the other integer; such flips move a few
values by a quantization step, while a misread graph moves most values or the shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.runtime import onnxruntime_session

# The float graph: float32 sums in another order. The QDQ graph: a few half-step flips, carried
# on; a misread node (wrong padding, axis or constant) differs on most of its values.
FLOAT_RTOL = 1e-3
QDQ_MEAN_RTOL = 0.05


def check_against_runtime(path: str | Path, graph: torch.nn.Module, images: torch.Tensor,
                          quantized: bool) -> None:
    """One-line QnnRepairError naming the first node of `graph` (an OnnxGraph read from
    `path`) whose output differs from ONNX Runtime's on `images`."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(path))
    names = [out for _key, _inputs, out in graph.wiring if isinstance(out, str) and ":" not in out]
    keys = {out: key for key, _inputs, out in graph.wiring}
    existing = {o.name for o in proto.graph.output}
    produced = {o for n in proto.graph.node for o in n.output}
    names = [n for n in names if n in produced]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                              if n not in existing)
    session = onnxruntime_session(proto.SerializeToString(), "disable")
    fixed = session.get_inputs()[0].shape[0]
    batch = images[:1] if isinstance(fixed, int) and fixed == 1 else images
    runtime = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: batch.float().numpy()})))
    simulated = _all_values(graph, batch)
    for name in names:
        want, got = runtime.get(name), simulated.get(name)
        if want is None or got is None:
            continue
        got = got.detach().double().numpy()
        problem = _difference(np.asarray(want, np.float64), got, quantized)
        if problem:
            node = graph.onnx_names.get(keys[name], name)
            raise QnnRepairError(
                f"{Path(path).name}: node {node!r} computes {problem} in qnnrepair's simulation "
                "than in ONNX Runtime; the simulation cannot stand for this file: report it "
                "with the file")


def _difference(want: np.ndarray, got: np.ndarray, quantized: bool) -> str | None:
    if want.shape != got.shape:
        return f"shape {got.shape} (ONNX Runtime: {want.shape})"
    scale = float(np.abs(want).max()) if want.size else 0.0
    if scale == 0.0:
        return None
    diff = np.abs(want - got)
    if quantized:
        if float(diff.mean()) > QDQ_MEAN_RTOL * float(np.abs(want).mean() + 1e-12):
            typical = float(np.abs(want).mean())
            return f"values {float(diff.mean()):.3g} apart on average (of {typical:.3g})"
        return None
    if float(diff.max()) > FLOAT_RTOL * scale:
        return f"values up to {float(diff.max()):.3g} apart (of {scale:.3g})"
    return None


def _all_values(graph: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    values = {graph.input_name: x.float()}
    with torch.no_grad():
        for key, inputs, out in graph.wiring:
            values[out] = graph.nodes[key](*[values[i] for i in inputs])
    return values
