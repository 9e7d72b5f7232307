"""Check that a QDQ model is its float model quantized: same graph, weights within half a step.

ONNX Runtime's quantize_static keeps the float graph's node names and attributes, adds
QuantizeLinear / DequantizeLinear pairs, and may drop a Relu or Clip whose range the next
QuantizeLinear's grid already enforces (QDQRemovableActivation). Every weight it writes is the
float weight rounded to the nearest step of its scale (clamped to the grid), every bias the
float bias rounded on the grid s_x * s_w. A file that breaks either rule was not quantized from
this float model, and a repair measured against it would chase the wrong reference. A
repaired file still passes: it keeps most integers where rounding put them (MIN_MATCHING).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.onnx_qdq.reader import QDQ_OPS, OnnxFile, node_key

# Nodes of the float graph the quantizer may remove.
REMOVABLE = ("Relu", "Clip", "Identity")
# Rounding to the nearest step leaves at most half a step; the rest is float32 slack (the
# quantizer divides in float32: |w/s| <= 2^7 loses ~1e-5 of a step).
MAX_STEPS = 0.5 + 1e-3
# A repair moves a few integers away from the float weights; a file quantized from other
# weights has almost none within half a step (measured: 0.6 % for another seed of the tiny net).
MIN_MATCHING = 0.9


def check_match(flt: OnnxFile, qdq: OnnxFile, float_graph: nn.Module, qdq_graph: nn.Module,
                layers: list[str]) -> None:
    """One-line QnnRepairError unless `qdq` is `flt` quantized (graph and weights)."""
    what = f"float model {Path(flt.path).name} does not match QDQ model {Path(qdq.path).name}"
    if len(flt.inputs) != len(qdq.inputs):
        raise QnnRepairError(f"{what}: {len(flt.inputs)} inputs against {len(qdq.inputs)}")
    # The nodes each graph simulates: one side may have folded what the other computes (a
    # shape computation the quantizer wrapped in Q/DQ folds only once its DQ is a constant).
    q_names, f_names = _simulated(qdq_graph), _simulated(float_graph)
    q_nodes = {node_key(n): n for n in qdq.nodes
               if n.op_type not in QDQ_OPS and (not n.name or n.name in q_names)}
    f_nodes = {node_key(n): n for n in flt.nodes if not n.name or n.name in f_names}
    for key, node in q_nodes.items():
        other = f_nodes.get(key)
        if other is None:
            raise QnnRepairError(f"{what}: its {node.label} is not in the float graph (a different "
                                 "graph): pass the float model it was quantized from")
        if other.op_type != node.op_type or other.attrs != node.attrs:
            raise QnnRepairError(f"{what}: {node.label} is {other.op_type} {other.attrs} in the "
                                 f"float graph but {node.op_type} {node.attrs} in the QDQ graph")
    extra = [n for k, n in f_nodes.items() if k not in q_nodes and n.op_type not in REMOVABLE]
    if extra:
        raise QnnRepairError(f"{what}: the float graph has {len(extra)} node(s) the QDQ graph "
                             f"lacks, first {extra[0].label} (a different graph)")
    counts = [_matching(what, qdq_graph.get_submodule(name), float_graph.get_submodule(name))
              for name in layers]
    within, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if within < MIN_MATCHING * total:
        label, n_in, n, steps = min(((layer, a, b, w) for (a, b, w), layer in
                                     zip(counts, layers)), key=lambda c: c[1] / c[2])
        name = getattr(qdq_graph.get_submodule(label), "node_name", label)
        raise QnnRepairError(
            f"{what}: only {within / total:.1%} of the weights and biases lie within half a step "
            f"of the float ones (a quantized or repaired copy keeps >= {MIN_MATCHING:.0%}); "
            f"node {name!r}: {n_in / n:.1%}, up to {steps:.3g} steps apart: was the QDQ model "
            "quantized from this float model?")


def _simulated(graph: nn.Module) -> set[str]:
    """Names of the nodes the graph simulates (the others were folded to constants)."""
    return set(graph.onnx_names.values())


def _matching(what: str, layer: nn.Module, reference: nn.Module) -> tuple[int, int, float]:
    """(values within half a step, values, largest distance in steps) over the layer's
    weights and biases."""
    label = f"node {layer.node_name!r}"
    if not isinstance(reference, (nn.Conv2d, nn.Linear)):
        raise QnnRepairError(f"{what}: {label} has no float weight in the float model")
    w_float = reference.weight.detach().double()
    if tuple(w_float.shape) != tuple(layer.weight_int.shape):
        raise QnnRepairError(f"{what}: {label} has weights {tuple(w_float.shape)} in the float "
                             f"model but {tuple(layer.weight_int.shape)} in the QDQ model")
    shape = (-1,) + (1,) * (w_float.dim() - 1)
    scale = layer.weight_scale.double().reshape(shape)
    zp = layer.weight_zero_point.double().reshape(shape)
    lo, hi = (layer.stored_qmin - zp) * scale, (layer.stored_qmax - zp) * scale
    clipped = torch.minimum(torch.maximum(w_float, lo), hi)
    w_steps = ((clipped - layer.weight_int.double() * scale).abs() / scale).reshape(-1)
    b_float = (reference.bias.detach().double() if reference.bias is not None
               else torch.zeros(layer.out_features, dtype=torch.float64))
    b_scale = layer.bias_scale().double()
    at_limit = layer.bias_int.abs().long() >= np.iinfo(np.int32).max  # clipped by the quantizer
    b_steps = ((b_float - layer.bias_int.double() * b_scale).abs() / b_scale)[~at_limit]
    steps = torch.cat([w_steps, b_steps])
    steps = torch.nan_to_num(steps, nan=float("inf"))
    return int((steps <= MAX_STEPS).sum()), steps.numel(), float(steps.max())
