"""Formulation "match" (the default for hidden layers): each neuron's pre-activation matches
the float model's in L1, on rows that summarize many sampled positions (repair/summary.py).

A summary carries every sampled row, so it draws from the whole repair set rather than from
the few images whose positions would fit in an LP's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qnnrepair.repair.lp.formulation import Formulation, LayerLP, register_formulation
from qnnrepair.repair.lp.neuron import NeuronProblem

if TYPE_CHECKING:
    from qnnrepair.repair.summary import RowSummary


@register_formulation("match")
class Match(Formulation):
    pass_rows = True

    def build(self, layer: LayerLP, owner: tuple[int, ...]) -> NeuronProblem:
        (c,) = owner
        rows = layer.record(layer.config.summary_samples, None)
        cols = rows.columns(c)
        groups = layer.memo.setdefault("groups", {})
        if cols.start not in groups:  # one per group of a grouped conv
            groups[cols.start] = _Group.of(layer, rows, c)
        group = groups[cols.start]
        summary, j = group.summary, c - group.first
        weight, scale, bias = layer.weight[c], float(layer.scale[c]), float(layer.bias[c])
        a, z = summary.rows, group.z[:, j]
        if len(a) == 0:  # constant inputs (a dead channel): only the mean is left to match
            a, z = np.zeros((1, a.shape[1])), np.zeros(1)
        # a(d) - target = s A (q + d) + bias - target = s A d - z: pass target accordingly
        target = scale * (a @ weight) + bias + z
        bounds = layer.delta_bounds(c)
        return NeuronProblem(a, target, weight, scale, bias, mode="match",
                             delta_bounds=bounds, fit_bias=False, max_rows=len(a),
                             bias_from=(summary.mean, float(group.residual_mean[j])),
                             columns=self.columns(a, z, bounds, layer.config.max_columns),
                             **layer.options)

    @staticmethod
    def columns(a, z, bounds, max_columns: int | None):
        """For a layer wider than `max_columns` inputs, the weights worth an LP column: those
        free to move whose summary column best explains what is to be matched (largest
        |A_j . z|, the least-squares gradient at no change); None keeps every column."""
        if max_columns is None or a.shape[1] <= max_columns:
            return None
        pull = np.abs(a.T @ z)
        if bounds is not None:
            pull[(bounds[0] == 0) & (bounds[1] == 0)] = -1.0  # cannot move
        return np.sort(np.argsort(-pull, kind="stable")[:max_columns])


@dataclass(frozen=True)
class _Group:
    """What the LPs of one group of a layer (all its neurons unless the conv is grouped) share:
    the summary of their inputs, and each neuron's residual (float pre-activation minus the
    quantized one) reduced to its mean and its right-hand side z, for all neurons at once
    (matrix products instead of two matrix-vector products per neuron)."""

    first: int  # the group's first channel
    summary: RowSummary
    z: np.ndarray  # (K, channels of the group)
    residual_mean: np.ndarray  # (channels of the group,)

    @classmethod
    def of(cls, layer: LayerLP, rows, channel: int) -> _Group:
        from qnnrepair.repair.summary import RowSummary  # torch: only where problems are built

        cols, first, end = rows.columns(channel), channel, channel + 1
        while first > 0 and rows.columns(first - 1) == cols:  # a group's channels are contiguous
            first -= 1
        while end < len(layer.weight) and rows.columns(end) == cols:
            end += 1
        channels = slice(first, end)
        inputs = rows.inputs[:, cols]
        summary = RowSummary.of(inputs, layer.n_rows, layer.seed)
        quantized = (inputs @ layer.weight[channels].T.astype(np.float64)) * layer.scale[channels]
        residual = rows.float_out[:, channels] - (quantized + layer.bias[channels])
        return cls(first, summary, summary.rhs(residual), residual.mean(axis=0))
