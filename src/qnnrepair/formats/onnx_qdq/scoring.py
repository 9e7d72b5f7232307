"""A QDQ graph's outputs as ONNX Runtime computes them, for the guard.

The simulation computes every convolution's exact integer sum; ONNX Runtime does so only where
its graph optimizations fuse a DequantizeLinear-Conv-QuantizeLinear group into one integer
kernel (QLinearConv). Where they do not (on E7's MobileNetV2, 15 of 53 convolutions, every
Add and the Pad nodes), it computes in float32 in its own summation order, and a value at a
half step rounds the other way. On a model near chance that moves the top-1 of 2.7 % of
ImageNet images; ONNX Runtime with and without its optimizations disagrees on as many. So
the guard scores an ONNX QDQ candidate in ONNX Runtime itself, as it runs by default: the
repair keeps what helps the file as users run it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qnnrepair.formats.onnx_qdq.graph import OnnxGraph
from qnnrepair.formats.onnx_qdq.layers import QDQ_LAYERS
from qnnrepair.formats.onnx_qdq.writer import with_integers
from qnnrepair.formats.runtime import onnxruntime_outputs


def scores_in_runtime(graph) -> bool:
    """Whether `graph` is a QDQ simulation (not a float reference) the guard runs in ONNX
    Runtime."""
    return isinstance(graph, OnnxGraph) and any(isinstance(m, QDQ_LAYERS)
                                                for m in graph.modules())


@torch.no_grad()
def runtime_logits(graph: OnnxGraph, images: torch.Tensor) -> torch.Tensor:
    """`graph`'s output on `images` by ONNX Runtime (default optimizations, torch's thread
    count), from its file with the graph's current integers written in (in memory)."""
    proto, _ = with_integers(Path(graph.path), graph)
    return torch.from_numpy(onnxruntime_outputs(proto.SerializeToString(), images, "all"))
