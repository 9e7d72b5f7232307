"""Write a repaired simulation back into a copy of its .tflite file.

Only the bytes of integer weight and bias buffers are overwritten, with values of the same
type and length, so everything else (graph, scales, zero points, metadata, alignment) stays
byte for byte as it was. The output is written to a temporary file and renamed into place;
the original file is only read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.tflite.graph import _TO_TORCH, TFLiteGraph, TFLiteModel
from qnnrepair.formats.tflite.layers import TFLITE_LAYERS
from qnnrepair.formats.tflite.reader import Tensor, read_tflite
from qnnrepair.formats.writing import check_output, fit_stored, write_bytes


def write_tflite(original_path: str | Path, graph: TFLiteGraph | TFLiteModel,
                 out_path: str | Path) -> list[str]:
    """Copy `original_path` to `out_path` with the integers of `graph`'s quantized layers.
    Returns the names of the tensors whose bytes changed."""
    original_path, out_path = check_output(original_path, out_path)
    if isinstance(graph, TFLiteModel):
        graph = graph.model
    source = read_tflite(original_path)
    data = bytearray(original_path.read_bytes())
    written: dict[int, bytes] = {}
    changed = []
    for name in graph.layer_names():
        layer = graph.get_submodule(name)
        if not isinstance(layer, TFLITE_LAYERS):
            raise QnnRepairError(f"{name} is not an integer layer (a float reference?): "
                                 "write the quantized model")
        targets = [(source.tensors[layer.weight_tensor], _stored_weight(layer))]
        if layer.bias_tensor is not None:
            targets.append((source.tensors[layer.bias_tensor], layer.bias_int.numpy()))
        elif layer.bias_int.any():
            raise QnnRepairError(f"{name} has a bias but its operator in {original_path.name} "
                                 "has none: a bias cannot be added without changing the graph")
        for tensor, values in targets:
            raw = _to_bytes(tensor, values, name)
            start = tensor.data_start
            if start in written and written[start] != raw:
                raise QnnRepairError(f"tensor {tensor.name!r} shares its buffer with another "
                                     f"layer and {name} changed it differently: cannot write")
            written[start] = raw
            if data[start:start + len(raw)] != raw:
                data[start:start + len(raw)] = raw
                changed.append(tensor.name)
    write_bytes(out_path, bytes(data))
    return changed


def _stored_weight(layer) -> np.ndarray:
    """Centred torch-layout integers -> the file's layout and stored integers (+ z_w)."""
    inverse = tuple(int(i) for i in np.argsort(_TO_TORCH[layer.file_op]))
    return layer.stored_weight().permute(*inverse).contiguous().numpy()


def _to_bytes(tensor: Tensor, values: np.ndarray, name: str) -> bytes:
    if tensor.data is None or tensor.data_start is None:
        raise QnnRepairError(f"tensor {tensor.name!r} of {name} has no constant buffer")
    stored = fit_stored(values, tensor.data.shape, tensor.dtype, name, f"tensor {tensor.name!r}")
    return np.ascontiguousarray(stored).astype(tensor.dtype.newbyteorder("<")).tobytes()


__all__ = ["write_tflite"]

