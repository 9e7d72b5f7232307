"""Before any repair: does the simulation compute LiteRT's integers, tensor by tensor?

The file runs in LiteRT with every intermediate tensor kept, and in the simulation, on one of
the user's images; each operator's output, as the integers of its tensor's grid, must be the
same (the simulation is LiteRT's arithmetic, bit for bit). The first tensor that differs is
named in one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from qnnrepair.errors import QnnRepairError


def check_against_litert(path: str | Path, graph: torch.nn.Module, images: torch.Tensor) -> None:
    """One-line QnnRepairError naming the first tensor of `graph` (a TFLiteGraph read from
    `path`) whose integers differ from LiteRT's on `images[:1]` (stored input integers, NCHW)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "for debugging purposes only": that is the purpose
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(str(path), num_threads=1,
                                  experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    pixels = images[:1]
    interpreter.set_tensor(detail["index"],
                           pixels.permute(0, 2, 3, 1).round().numpy().astype(detail["dtype"]))
    interpreter.invoke()
    values = {graph.input_index: graph.preprocess(pixels)}
    with torch.no_grad():
        for op, (inputs, out), name in zip(graph.ops, graph.wiring, graph.names):
            values[out] = op(*[values[i] for i in inputs])
            if op.out_q is None:
                continue
            want = np.asarray(interpreter.get_tensor(out)).astype(np.int64)
            got = op.out_q.to_int(values[out]).to(torch.int64)
            if got.dim() == 4:
                got = got.permute(0, 2, 3, 1)
            got = got.numpy()
            if got.shape != want.shape or not np.array_equal(got, want):
                detail = (f"shape {got.shape} (LiteRT: {want.shape})" if got.shape != want.shape
                          else f"{int((got != want).sum())} of {want.size} integers other than")
                raise QnnRepairError(
                    f"{Path(path).name}: tensor {name!r} has {detail} LiteRT's in qnnrepair's "
                    "simulation; the simulation cannot stand for this file: report it with "
                    "the file")
