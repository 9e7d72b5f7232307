"""Write a repaired simulation back into a copy of its QDQ model.

Only the integer weight and bias initializers behind the quantized layers' DequantizeLinear
nodes get new values, of the same type and shape; nodes, scales, zero points, metadata and
every other initializer stay as they were. The output is written to a temporary file and
renamed into place; the original file is only read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.onnx_qdq.graph import OnnxGraph, OnnxQDQModel
from qnnrepair.formats.onnx_qdq.layers import QDQ_LAYERS
from qnnrepair.formats.onnx_qdq.reader import load_proto
from qnnrepair.formats.writing import check_output, fit_stored, write_bytes


def write_qdq(original_qdq_path: str | Path, model: OnnxGraph | OnnxQDQModel,
              out_path: str | Path) -> list[str]:
    """Copy `original_qdq_path` to `out_path` with the integers of `model`'s quantized layers.
    Returns the names of the initializers whose values changed."""
    original_path, out_path = check_output(original_qdq_path, out_path)
    proto, changed = with_integers(original_path, model)
    write_bytes(out_path, proto.SerializeToString())
    return changed


def with_integers(original_path: Path, model: OnnxGraph | OnnxQDQModel):
    """(the ModelProto of `original_path` with the integers of `model`'s quantized layers,
    the names of the initializers whose values changed)."""
    from onnx import numpy_helper

    graph = model.model if isinstance(model, OnnxQDQModel) else model
    layers = (list(model.layers) if isinstance(model, OnnxQDQModel) else
              [n for n in graph.layer_names() if isinstance(graph.get_submodule(n), QDQ_LAYERS)])
    if not layers:
        raise QnnRepairError("the model has no quantized layers (a float reference?): write the "
                             "quantized model")
    proto = load_proto(original_path)
    initializers = {t.name: t for t in proto.graph.initializer}
    written: dict[str, np.ndarray] = {}
    changed = []
    for name in layers:
        layer = graph.get_submodule(name)
        targets = [(layer.weight_initializer, _stored_weight(layer))]
        if layer.bias_initializer is not None:
            targets.append((layer.bias_initializer, layer.bias_int.numpy()))
        elif layer.bias_int.any():
            raise QnnRepairError(f"{name} has a bias but its node in {original_path.name} has "
                                 "none: a bias cannot be added without changing the graph")
        for init_name, values in targets:
            tensor = initializers.get(init_name)
            if tensor is None:
                raise QnnRepairError(f"{name}: initializer {init_name!r} is not in "
                                     f"{original_path.name}: was the model read from this file?")
            old = numpy_helper.to_array(tensor)
            new = fit_stored(values, old.shape, old.dtype, name, f"initializer {init_name!r}")
            if init_name in written:
                if not np.array_equal(written[init_name], new):
                    raise QnnRepairError(f"initializer {init_name!r} is shared with another layer "
                                         f"and {name} changed it differently: cannot write")
                continue
            written[init_name] = new
            if not np.array_equal(old, new):
                replacement = numpy_helper.from_array(new, init_name)
                replacement.doc_string = tensor.doc_string
                tensor.CopyFrom(replacement)
                changed.append(init_name)
    return proto, changed


def _stored_weight(layer) -> np.ndarray:
    """Centred torch-layout integers -> the file's layout and stored integers (+ z_w)."""
    stored = layer.stored_weight()
    if layer.weight_transposed:
        stored = stored.t()
    return stored.contiguous().numpy()


__all__ = ["with_integers", "write_qdq"]
