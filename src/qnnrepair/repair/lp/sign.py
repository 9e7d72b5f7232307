"""Formulation "sign" (the paper's variant): each neuron's pre-activation keeps the sign of
the float model's with a margin, on raw sampled rows (one image per row)."""

from __future__ import annotations

from qnnrepair.repair.lp.formulation import Formulation, LayerLP, register_formulation
from qnnrepair.repair.lp.neuron import NeuronProblem


@register_formulation("sign")
class Sign(Formulation):
    def build(self, layer: LayerLP, owner: tuple[int, ...]) -> NeuronProblem:
        (c,) = owner
        rows = layer.record(layer.n_rows, layer.n_rows)
        keep = layer.row_mask(rows)
        return NeuronProblem(rows.inputs[keep][:, rows.columns(c)], rows.float_out[keep, c],
                             layer.weight[c], float(layer.scale[c]), float(layer.bias[c]),
                             mode="sign", delta_bounds=layer.delta_bounds(c),
                             max_rows=layer.n_rows, **layer.options)
