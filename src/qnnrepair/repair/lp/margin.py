"""The output layer's LP: classification margins on the repair labels (formulation "margin").

The logits are linear in the last layer's weights given the layer's input features, so "input n
is classified correctly with margin kappa" is a set of linear constraints with one slack per
input; minimize mean slack + ``lam * ||d||``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp.core import Core, check_common, norm_of, solve_core, step_unit
from qnnrepair.repair.lp.formulation import Formulation, LayerLP, register_formulation
from qnnrepair.repair.lp.highs import DEFAULT_SOLVER, INF
from qnnrepair.repair.lp.result import (
    KAPPA_STEPS,
    LAM_STEPS,
    LPResult,
    select_rows,
    solved_result,
    unchanged_result,
)


def solve_margin_lp(features, labels, weight_int, weight_scale, bias, neurons: Sequence[int],
                    qmin: int, qmax: int, *, kappa: float | None = None,
                    lam: float | None = None, norm: str = "l1", integer: bool = False,
                    time_limit: float | None = None, max_rows: int = 1000,
                    fit_bias: bool = True, solver: str = DEFAULT_SOLVER) -> LPResult:
    """Change the output layer's rows ``neurons`` so that inputs are classified with a margin.

    Logit ``z_k(n) = s_k * sum_j (q_kj + d_kj) h_nj + b_k + e_k`` (d, e only on chosen rows).
    For each kept input n with label y and each class k != y involving a chosen row::

        z_y(n) - z_k(n) + xi_n >= kappa,   xi_n >= 0

    minimize ``sum(xi) / N + lam * ||d||`` (``norm`` "l1" or "linf"). Pairs where neither y nor k
    is chosen are constant: they become lower bounds on xi_n, not rows. When the rows exceed
    ``max_rows``, the failing inputs are kept first, then the passing ones nearest the boundary
    (:func:`select_rows`); N is the number of inputs kept.

    Args:
        features: (N, J) the layer's input features h as the quantized model computes them.
        labels: (N,) class labels.
        weight_int: (K, J) integer weights q; weight_scale: (K,) per-row scale; bias: (K,) real.
        neurons: the rows k to change.
        qmin, qmax: the integer grid.
        kappa, lam: margin and per-step penalty; None picks ``KAPPA_STEPS`` / ``LAM_STEPS``
            steps (see qnnrepair.repair.lp.result).
        integer: solve the MILP (integrality on d) instead of rounding the LP relaxation.
        time_limit: seconds for HiGHS; when hit, the best feasible point is returned (or no
            change), with the status saying so.
        fit_bias: also give each chosen row a real bias delta.
        solver: HiGHS LP solver ("simplex", "ipm", ...).
    """
    h, labels, q, s, b, chosen = _checked(features, labels, weight_int, weight_scale, bias,
                                          neurons)
    check_common(norm, qmin, qmax, q, max_rows, time_limit)
    n_inputs, n_features = h.shape
    n_classes = q.shape[0]

    logits = (h @ q.T.astype(np.float64)) * s + b
    rows_n = np.arange(n_inputs)
    gaps = logits[rows_n, labels][:, None] - logits  # gaps[n, k] = z_y - z_k
    gaps[rows_n, labels] = np.inf
    margins = gaps.min(axis=1) if n_classes > 1 else np.full(n_inputs, np.inf)
    failing = np.argmax(logits, axis=1) != labels
    unit = step_unit(s[chosen] if len(chosen) else s, h)
    kappa = KAPPA_STEPS * unit if kappa is None else float(kappa)

    is_chosen = np.zeros(n_classes, bool)
    is_chosen[chosen] = True
    position = np.full(n_classes, -1)
    position[chosen] = np.arange(len(chosen))
    rows_per_input = np.where(is_chosen[labels], n_classes - 1, len(chosen))
    kept = select_rows(margins, failing, max_rows, rows_per_input)
    n_kept = len(kept)
    lam = LAM_STEPS * unit / max(n_kept, 1) if lam is None else float(lam)

    def evaluate(d: np.ndarray, e: np.ndarray) -> float:
        z = logits[kept].copy()
        if len(chosen):
            z[:, chosen] += (h[kept] @ d.T.astype(np.float64)) * s[chosen] + e
        y = labels[kept]
        gap = z[np.arange(n_kept), y][:, None] - z
        gap[np.arange(n_kept), y] = np.inf
        slack = np.maximum(0.0, kappa - gap.min(axis=1)) if n_kept else np.zeros(0)
        return float(slack.mean()) + lam * norm_of(d, norm) if n_kept else lam * norm_of(d, norm)

    zero_d = np.zeros((len(chosen), n_features), np.int64)
    zero_e = np.zeros(len(chosen))
    unchanged = evaluate(zero_d, zero_e)
    if len(chosen) == 0 or n_kept == 0 or n_classes < 2:
        return unchanged_result(zero_d, zero_e, unchanged, lam, kappa, kept)

    core = _pair_core(h, labels, gaps, kept, chosen, is_chosen, position, s, q, qmin, qmax,
                      kappa, unit, fit_bias)
    n_chosen = len(chosen)
    # Internal objective = sum(xi / unit) + (lam * N / unit) * ||d|| = (N / unit) * objective.
    to_true = unit / n_kept
    solved = solve_core(core, norm=norm, lam_internal=lam / to_true, integer=integer,
                        time_limit=time_limit, solver=solver)
    e = np.zeros(n_chosen)
    e[:len(solved.bias)] = solved.bias * unit
    d = solved.d.reshape(n_chosen, n_features)
    return solved_result(solved, d, e, evaluate(d, e), unchanged, to_true, lam, kappa,
                         solved.d_relaxed.reshape(n_chosen, n_features), kept)


@dataclass(frozen=True, repr=False)
class MarginProblem:
    """The arguments of :func:`solve_margin_lp`, as one picklable problem."""

    features: np.ndarray
    labels: np.ndarray
    weight_int: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    neurons: tuple[int, ...]
    qmin: int
    qmax: int
    kappa: float | None = None
    lam: float | None = None
    norm: str = "l1"
    integer: bool = False
    time_limit: float | None = None
    max_rows: int = 1000
    fit_bias: bool = True
    solver: str = DEFAULT_SOLVER

    def solve(self) -> LPResult:
        return solve_margin_lp(**{f.name: getattr(self, f.name) for f in fields(self)})

    def __repr__(self) -> str:
        return (f"MarginProblem(rows={list(self.neurons)}, inputs={len(self.labels)}, "
                f"features={self.features.shape[1]})")


@register_formulation("margin")
class Margin(Formulation):
    """All chosen rows of the output layer in one LP, on raw rows of the repair labels."""

    output_only = True

    def owners(self, indices: Sequence[int]) -> list[tuple[int, ...]]:
        return [tuple(indices)]

    def build(self, layer: LayerLP, owner: tuple[int, ...]) -> MarginProblem:
        rows = layer.record(layer.n_rows, layer.n_rows)
        keep = layer.row_mask(rows)
        return MarginProblem(rows.inputs[keep], layer.target[rows.image][keep], layer.weight,
                             layer.scale, layer.bias, owner, max_rows=layer.n_rows,
                             **layer.options)


def _checked(features, labels, weight_int, weight_scale, bias, neurons):
    """The margin LP's inputs as arrays, shapes and ranges checked."""
    h = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    q = np.asarray(weight_int)
    s = np.asarray(weight_scale, dtype=np.float64).reshape(-1)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if h.ndim != 2 or q.ndim != 2 or h.shape[1] != q.shape[1]:
        raise QnnRepairError(f"features must be (N, J) and weight_int (K, J); got {h.shape} and "
                             f"{q.shape}")
    n_inputs, n_features = h.shape
    n_classes = q.shape[0]
    if labels.shape != (n_inputs,) or s.shape != (n_classes,) or b.shape != (n_classes,):
        raise QnnRepairError(
            f"labels must be ({n_inputs},), weight_scale and bias ({n_classes},); got "
            f"{labels.shape}, {s.shape}, {b.shape}")
    if n_inputs and (labels.min() < 0 or labels.max() >= n_classes):
        raise QnnRepairError(f"labels must be in [0, {n_classes}), got [{labels.min()}, "
                             f"{labels.max()}]")
    chosen = np.asarray(list(neurons), dtype=np.int64)
    if len(np.unique(chosen)) != len(chosen) or np.any((chosen < 0) | (chosen >= n_classes)):
        raise QnnRepairError(f"neurons must be distinct rows in [0, {n_classes}), got "
                             f"{chosen.tolist()}")

    return h, labels, q, s, b, chosen


def _pair_core(h, labels, gaps, kept, chosen, is_chosen, position, s, q, qmin, qmax, kappa,
               unit, fit_bias) -> Core:
    """One row per (kept input, class) pair that involves a chosen row, one slack per input."""
    n_kept, n_features = len(kept), h.shape[1]
    # Pairs (input, class) that involve a chosen row, grouped by input.
    y = labels[kept]
    involved = is_chosen[y][:, None] | is_chosen[None, :]
    involved[np.arange(n_kept), y] = False
    pair_i, pair_k = np.nonzero(involved)  # pair_i indexes kept
    pair_y = y[pair_i]
    n_pairs = len(pair_i)
    # Constant pairs bound xi from below: xi_n >= kappa - gap.
    constant_gap = np.where(involved, np.inf, gaps[kept])
    constant_gap[np.arange(n_kept), y] = np.inf
    xi_lower = np.maximum(0.0, kappa - constant_gap.min(axis=1)) / unit
    rhs = (kappa - gaps[kept[pair_i], pair_k]) / unit

    n_chosen = len(chosen)
    j = np.arange(n_features)
    hk = h[kept]
    d_rows, d_cols, d_vals = [], [], []
    for sign, cls in ((1.0, pair_y), (-1.0, pair_k)):
        sel = np.nonzero(is_chosen[cls])[0]
        d_rows.append(np.repeat(sel, n_features))
        d_cols.append((position[cls[sel]][:, None] * n_features + j).reshape(-1))
        d_vals.append((sign * s[cls[sel]][:, None] / unit * hk[pair_i[sel]]).reshape(-1))
    lower = np.clip(qmin - q[chosen], None, 0).reshape(-1).astype(np.float64)
    upper = np.clip(qmax - q[chosen], 0, None).reshape(-1).astype(np.float64)

    n_bias = n_chosen if fit_bias else 0
    xi_col = n_bias + np.arange(n_kept)
    extra_rows = [np.arange(n_pairs)]
    extra_cols = [xi_col[pair_i]]
    extra_vals = [np.ones(n_pairs)]
    if fit_bias:
        for sign, cls in ((1.0, pair_y), (-1.0, pair_k)):
            sel = np.nonzero(is_chosen[cls])[0]
            extra_rows.append(sel)
            extra_cols.append(position[cls[sel]])
            extra_vals.append(np.full(len(sel), sign))
    xi0 = xi_lower.copy()
    np.maximum.at(xi0, pair_i, rhs)
    core = Core(
        n_rows=n_pairs, row_lower=rhs, row_upper=np.full(n_pairs, INF),
        d_lower=lower, d_upper=upper,
        d_rows=np.concatenate(d_rows), d_cols=np.concatenate(d_cols),
        d_vals=np.concatenate(d_vals),
        extra_cost=np.concatenate([np.zeros(n_bias), np.ones(n_kept)]),
        extra_lower=np.concatenate([np.full(n_bias, -INF), xi_lower]),
        extra_upper=np.full(n_bias + n_kept, INF),
        extra_rows=np.concatenate(extra_rows), extra_cols=np.concatenate(extra_cols),
        extra_vals=np.concatenate(extra_vals),
        extra_x0=np.concatenate([np.zeros(n_bias), xi0]),
        bias_cols=np.arange(n_bias),
    )
    return core
