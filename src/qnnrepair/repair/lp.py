"""The linear programs of the repair: integer weight deltas found by LP relaxation or MILP.

Pure numpy + highspy (no torch), so that the worker processes of :func:`solve_many` start fast.

Variables of every LP: an integer delta ``d`` on each weight of the chosen neurons, bounded so
that ``q + d`` stays on the grid ``[qmin, qmax]`` (never wrapped around), and one real bias delta
``e`` per chosen neuron. Two formulations (DESIGN.md section 4):

- :func:`solve_margin_lp`, output layer: the logits are linear in the last layer's weights given
  the layer's input features, so "input n is classified correctly with margin kappa" is a set of
  linear constraints with one slack per input; minimize mean slack + ``lam * ||d||``.
- :func:`solve_neuron_lp`, hidden neuron: its pre-activation is linear in its own weights given
  the (dequantized) input the integer kernel sees; either match a target pre-activation in L1
  ("match") or only its sign with a margin ("sign", the paper's variant).

The LP relaxation is solved by HiGHS, ``d`` is rounded to the nearest integer and clamped to the
grid, the bias deltas are re-fitted to the rounded weights (a small sparse LP with ``d`` fixed),
and the objective of that rounded solution is evaluated again in numpy. ``integer=True`` then
solves the MILP (integrality on ``d``) starting from the better of "no change" and the rounded
point, so it never returns worse than rounding, whatever its time limit.

Time limits are HiGHS's own: it checks the clock between steps, and on dense MILPs one root cut
round can run well past the limit (measured: a 30 s limit returned after 70 s on 576 weights x
1,000 dense rows; small MILPs stop within a fraction of a second). LP mode stays within about a
second of it. A limit that is hit never raises: the status says "time_limit", and without any
feasible point nothing is changed ("time_limit_no_solution").

Units. Every objective is a per-input (per-row) average, in the units of the logits or
pre-activations, plus ``lam`` per integer step of weight change. Internally the rows are divided
by one *step*, the typical change of a logit / pre-activation caused by one integer step on one
weight for one input (``scale * mean |input|``), so the matrix entries and the costs that HiGHS
sees are O(1) whatever the bit width, and tie-breaking costs stay far above its tolerances.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp_highs import DEFAULT_SOLVER, INF, HighsSolver, SparseLP

__all__ = [
    "KAPPA_STEPS",
    "LAM_STEPS",
    "LPProblem",
    "LPResult",
    "select_rows",
    "solve_many",
    "solve_margin_lp",
    "solve_neuron_lp",
]

# Defaults, in units of one step (see the module docstring).
#
# lam: a fraction of what one step can buy. One step on weight j changes input n's logit (or
# pre-activation) by scale * |h_nj|, about one step, so it can lower the mean slack by up to
# step / N when it helps a single input. A penalty of LAM_STEPS * step / N per step is 1% of
# that: any change that fixes (or moves towards fixing) even one input out of N is worth making,
# while among solutions that fix the same inputs, the one with fewer steps wins.
LAM_STEPS = 0.01
# kappa: the margin asked for, two steps. A fixed input sits exactly on its margin in the LP
# optimum; rounding each fractional delta moves its logits by up to half a step, so a margin of a
# couple of steps keeps it fixed after rounding a handful of weights, while staying negligible
# next to typical logit gaps (one step is about 1e-3 of a logit at 8 bit).
KAPPA_STEPS = 2.0

_NORMS = ("l1", "linf")


@dataclass(frozen=True, repr=False)
class LPResult:
    """Outcome of one repair LP.

    Attributes:
        delta_weight: integer deltas, rounded and clamped so that ``q + delta`` is on the grid.
            Shape ``(len(neurons), J)`` for the margin LP, ``(J,)`` for the neuron LP.
        delta_bias: real bias deltas in the units of ``bias`` (the caller rounds them to its
            bias grid); an array for the margin LP, a float for the neuron LP.
        status: the HiGHS model status in snake case ("optimal", "time_limit", ...), with
            "_no_solution" appended when HiGHS had no feasible point and nothing was changed;
            "no_variables" when there was nothing to change.
        objective_relaxed: optimum of the LP relaxation, or in MILP mode the best proven lower
            bound; a lower bound on ``objective_rounded`` (NaN when not known).
        objective_rounded: the objective of the returned (integer) solution, re-evaluated.
        objective_unchanged: the objective of changing nothing, for comparison.
        n_rows, n_cols: size of the LP handed to HiGHS: the data rows (at most ``max_rows``)
            plus two sparse rows per weight where the norm needs them (L-inf; L1 in "match").
        solve_seconds: wall-clock seconds spent in HiGHS (relaxation, bias re-fit, MILP).
        lam, kappa: the values used (defaults are resolved to numbers here).
        norm_relaxed: ``||d||`` of the relaxed solution as the LP saw it (``t`` for "linf").
        delta_weight_relaxed: the fractional deltas before rounding.
        rows_kept: indices of the inputs (margin LP) or rows (neuron LP) the LP was built on.
    """

    delta_weight: np.ndarray
    delta_bias: np.ndarray | float
    status: str
    objective_relaxed: float
    objective_rounded: float
    objective_unchanged: float
    n_rows: int
    n_cols: int
    solve_seconds: float
    lam: float
    kappa: float
    norm_relaxed: float
    delta_weight_relaxed: np.ndarray
    rows_kept: np.ndarray

    @property
    def changed(self) -> bool:
        return bool(np.any(self.delta_weight != 0) or np.any(np.asarray(self.delta_bias) != 0))

    def __repr__(self) -> str:
        return (
            f"LPResult(status={self.status!r}, shape={tuple(self.delta_weight.shape)}, "
            f"steps={int(np.abs(self.delta_weight).sum())}, "
            f"objective relaxed/rounded/unchanged={self.objective_relaxed:.6g}/"
            f"{self.objective_rounded:.6g}/{self.objective_unchanged:.6g}, "
            f"rows x cols={self.n_rows}x{self.n_cols}, {self.solve_seconds:.3f}s)"
        )


# --------------------------------------------------------------------------------------------
# Row selection


def select_rows(margins, failing, max_rows: int, rows_per_input=None) -> np.ndarray:
    """Which inputs to keep so that the LP has at most ``max_rows`` constraint rows.

    Priority: every failing input first, then the passing inputs nearest the decision boundary
    (smallest margin). Within each group inputs nearer the boundary (smaller ``|margin|``) come
    first, then lower index, so the choice is deterministic. Inputs are taken in that order while
    their rows fit (at least one is always kept).

    Args:
        margins: (N,) margin of each input (negative or small when failing).
        failing: (N,) bool, the inputs that are currently misclassified / wrong.
        max_rows: the row budget.
        rows_per_input: (N,) rows each input contributes (default 1).

    Returns:
        Ascending indices of the kept inputs.
    """
    margins = np.asarray(margins, dtype=np.float64)
    failing = np.asarray(failing, dtype=bool)
    n = len(margins)
    if failing.shape != (n,):
        raise QnnRepairError(f"select_rows: failing has shape {failing.shape}, margins ({n},)")
    rows = np.ones(n, np.int64) if rows_per_input is None else np.asarray(rows_per_input, np.int64)
    if rows.sum() <= max_rows:
        return np.arange(n)
    # lexsort: the last key is the primary one.
    order = np.lexsort((np.arange(n), np.abs(margins), ~failing))
    n_keep = max(1, int(np.searchsorted(np.cumsum(rows[order]), max_rows, side="right")))
    return np.sort(order[:n_keep])


# --------------------------------------------------------------------------------------------
# Shared assembly: d columns, norm columns, rounding


@dataclass
class _Core:
    """The part of an LP specific to one formulation, in internal (step) units.

    The d entries are (row, d index, value); the "extra" columns (bias deltas, slacks,
    residuals) follow the d columns, with their own entries, costs and bounds, and ``extra_x0``
    is their value at d = 0, e = 0 (a feasible point).
    """

    n_rows: int
    row_lower: np.ndarray
    row_upper: np.ndarray
    d_lower: np.ndarray
    d_upper: np.ndarray
    d_rows: np.ndarray
    d_cols: np.ndarray
    d_vals: np.ndarray
    extra_cost: np.ndarray
    extra_lower: np.ndarray
    extra_upper: np.ndarray
    extra_rows: np.ndarray
    extra_cols: np.ndarray
    extra_vals: np.ndarray
    extra_x0: np.ndarray
    bias_cols: np.ndarray  # indices into the extra columns


@dataclass
class _Layout:
    lp: SparseLP
    d_plus: np.ndarray  # column of d (or of its positive part)
    d_minus: np.ndarray | None  # column of d's negative part (L1 split), else None
    bias: np.ndarray
    norm_cols: np.ndarray  # columns whose sum is the norm term
    x0: np.ndarray


def _assemble(core: _Core, norm: str, lam_internal: float, l1_split: bool) -> _Layout:
    """Add ``lam_internal * ||d||`` to a core.

    Two ways to write the norm, chosen for speed (measured, see ``DEFAULT_SOLVER``):

    - L1 split, ``d = d+ - d-`` with ``d+, d- >= 0``: no extra rows, but every dense entry of d
      appears twice. Changing nothing is the starting vertex of the simplex, so LPs whose optimum
      changes few weights (margin, sign) finish in a handful of pivots.
    - Auxiliary columns bounding ``|d_j|``, two sparse rows ``aux - d_j >= 0``, ``aux + d_j >= 0``
      per weight: one ``a_j`` per weight for L1 (used when most weights move, as in the "match"
      regression: half the non-zeros of the split), one shared ``t`` for L-inf.

    Integrality (MILP mode) is on the d columns only.
    """
    n_d = len(core.d_lower)
    n_extra = len(core.extra_cost)
    rows, cols, vals = [core.d_rows], [core.d_cols], [core.d_vals]
    row_lower, row_upper = [core.row_lower], [core.row_upper]
    n_rows = core.n_rows
    magnitude = np.maximum(np.abs(core.d_lower), np.abs(core.d_upper))
    one_sided = (core.d_lower >= 0) | (core.d_upper <= 0)
    if norm == "l1" and one_sided.all():
        # Every d_j has a known sign (e.g. the rounding-direction bounds), so |d_j| is linear:
        # +-lam on d itself, no extra columns or rows.
        d_plus, d_minus, extra0 = np.arange(n_d), None, n_d
        sign = np.where(core.d_upper > 0, 1.0, -1.0)
        cost = np.concatenate([lam_internal * sign, core.extra_cost])
        lower = np.concatenate([core.d_lower, core.extra_lower])
        upper = np.concatenate([core.d_upper, core.extra_upper])
        integer = np.concatenate([np.ones(n_d, bool), np.zeros(n_extra, bool)])
        norm_cols = np.zeros(0, np.int64)
    elif norm == "l1" and l1_split:
        d_plus, d_minus = np.arange(n_d), n_d + np.arange(n_d)
        extra0 = 2 * n_d
        rows.append(core.d_rows)
        cols.append(core.d_cols + n_d)
        vals.append(-core.d_vals)
        cost = np.concatenate([np.full(2 * n_d, lam_internal), core.extra_cost])
        lower = np.concatenate([np.zeros(2 * n_d), core.extra_lower])
        upper = np.concatenate(
            [np.maximum(core.d_upper, 0), np.maximum(-core.d_lower, 0), core.extra_upper])
        integer = np.concatenate([np.ones(2 * n_d, bool), np.zeros(n_extra, bool)])
        norm_cols = np.concatenate([d_plus, d_minus])
    else:
        d_plus, d_minus = np.arange(n_d), None
        extra0 = n_d
        if norm == "l1":
            aux_of_weight = np.arange(n_d)
            aux_upper = magnitude
        else:
            aux_of_weight = np.zeros(n_d, np.int64)
            aux_upper = np.array([magnitude.max(initial=0.0)])
        norm_cols = n_d + n_extra + np.arange(len(aux_upper))
        cost = np.concatenate([np.zeros(n_d), core.extra_cost,
                               np.full(len(aux_upper), lam_internal)])
        lower = np.concatenate([core.d_lower, core.extra_lower, np.zeros(len(aux_upper))])
        upper = np.concatenate([core.d_upper, core.extra_upper, aux_upper])
        integer = np.concatenate([np.ones(n_d, bool), np.zeros(n_extra + len(aux_upper), bool)])
        norm_rows = n_rows + np.arange(2 * n_d)
        aux = norm_cols[aux_of_weight]
        rows += [norm_rows, norm_rows]
        cols += [np.concatenate([aux, aux]), np.concatenate([d_plus, d_plus])]
        vals += [np.ones(2 * n_d), np.concatenate([-np.ones(n_d), np.ones(n_d)])]
        row_lower.append(np.zeros(2 * n_d))
        row_upper.append(np.full(2 * n_d, INF))
        n_rows += 2 * n_d
    rows.append(core.extra_rows)
    cols.append(core.extra_cols + extra0)
    vals.append(core.extra_vals)
    lp = SparseLP.from_triplets(
        np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), n_rows,
        col_cost=cost, col_lower=lower, col_upper=upper,
        row_lower=np.concatenate(row_lower), row_upper=np.concatenate(row_upper),
        integer=integer,
    )
    x0 = np.zeros(lp.n_cols)
    x0[extra0:extra0 + n_extra] = core.extra_x0
    return _Layout(lp, d_plus, d_minus, extra0 + core.bias_cols, norm_cols, x0)


def _delta_from(layout: _Layout, x: np.ndarray) -> np.ndarray:
    d = x[layout.d_plus]
    return d - x[layout.d_minus] if layout.d_minus is not None else d


def _refit_extras(core: _Core, d: np.ndarray, time_limit) -> tuple[np.ndarray | None, float]:
    """Re-solve for the extra columns (bias deltas, slacks) with d fixed to integers.

    With d a constant, what is left is a small sparse LP (one or two entries per row), solved
    from scratch in milliseconds; re-solving the full LP with d fixed took up to a second of
    simplex pivots on the dense "match" LPs.
    """
    shift = np.bincount(core.d_rows, weights=core.d_vals * d[core.d_cols], minlength=core.n_rows)
    lp = SparseLP.from_triplets(
        core.extra_rows, core.extra_cols, core.extra_vals, core.n_rows,
        col_cost=core.extra_cost, col_lower=core.extra_lower, col_upper=core.extra_upper,
        row_lower=core.row_lower - shift, row_upper=core.row_upper - shift,
        integer=np.zeros(len(core.extra_cost), bool),
    )
    outcome = HighsSolver(lp, solver="simplex", time_limit=time_limit).run()
    return outcome.x, outcome.seconds


@dataclass(frozen=True)
class _Solved:
    """A solved core, in internal units."""

    d_relaxed: np.ndarray
    d: np.ndarray
    bias: np.ndarray
    status: str
    bound: float
    norm_value: float
    seconds: float
    n_rows: int
    n_cols: int


def _point(layout: _Layout, core: _Core, d: np.ndarray, x_extra: np.ndarray) -> np.ndarray:
    """The full column vector of the assembled LP for given integer d and extra columns."""
    x = np.zeros(layout.lp.n_cols)
    n_extra = len(core.extra_cost)
    if layout.d_minus is not None:
        x[layout.d_plus] = np.maximum(d, 0)
        x[layout.d_minus] = np.maximum(-d, 0)
        x[2 * len(d):2 * len(d) + n_extra] = x_extra
    else:
        x[layout.d_plus] = d
        x[len(d):len(d) + n_extra] = x_extra
        if len(layout.norm_cols):
            x[layout.norm_cols] = np.abs(d) if len(layout.norm_cols) == len(d) \
                else np.abs(d).max()
    return x


def _solve(core: _Core, *, norm: str, lam_internal: float, integer: bool, time_limit,
           solver: str, l1_split: bool = True) -> _Solved:
    """Solve the LP relaxation, round d to the grid, re-fit the bias deltas; for a MILP, go on
    from the better of "no change" and that rounded point, in the time left."""
    layout = _assemble(core, norm, lam_internal, l1_split)
    lp = layout.lp
    started = time.perf_counter()
    relaxed = HighsSolver(lp, solver=solver, time_limit=time_limit).run()
    seconds = relaxed.seconds
    n_d = len(core.d_lower)
    d_relaxed = np.zeros(n_d)
    d = np.zeros(n_d, np.int64)
    bias = np.zeros(len(layout.bias))
    norm_value = bound = float("nan")
    x_extra = None
    if relaxed.x is not None:
        d_relaxed = _delta_from(layout, relaxed.x)
        d = np.clip(np.rint(d_relaxed), core.d_lower, core.d_upper).astype(np.int64)
        bias = relaxed.x[layout.bias]
        norm_value = float(relaxed.x[layout.norm_cols].sum()) if len(layout.norm_cols) \
            else float(np.abs(d_relaxed).sum())
        bound = relaxed.bound
        if integer or (len(layout.bias) and np.any(d != d_relaxed)):
            x_extra, refit_seconds = _refit_extras(core, d, time_limit)
            seconds += refit_seconds
            if x_extra is not None:
                bias = x_extra[core.bias_cols]
    if not integer or not lp.integer.any():
        status = relaxed.status if relaxed.x is not None else f"{relaxed.status}_no_solution"
        return _Solved(d_relaxed, d, bias, status, bound, norm_value, seconds, lp.n_rows,
                       lp.n_cols)

    # MILP. Changing nothing is always feasible; the rounded relaxation usually is better.
    start = layout.x0
    if x_extra is not None:
        rounded = _point(layout, core, d, x_extra)
        if lp.col_cost @ rounded < lp.col_cost @ start:
            start = rounded
    remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - started),
                                                    0.0)
    milp = HighsSolver(lp, integer=True, time_limit=remaining)
    milp.set_start(start)
    outcome = milp.run()
    seconds += outcome.seconds
    x = outcome.x if outcome.x is not None else start
    d = np.clip(np.rint(_delta_from(layout, x)), core.d_lower, core.d_upper).astype(np.int64)
    # Both the LP optimum and the MILP dual bound are lower bounds: report the tighter.
    bounds = [v for v in (bound, outcome.bound) if np.isfinite(v)]
    return _Solved(d_relaxed, d, x[layout.bias], outcome.status,
                   max(bounds) if bounds else float("nan"), norm_value, seconds, lp.n_rows,
                   lp.n_cols)


def _norm(d: np.ndarray, norm: str) -> float:
    if d.size == 0:
        return 0.0
    return float(np.abs(d).sum()) if norm == "l1" else float(np.abs(d).max())


def _check_common(norm, qmin, qmax, weight_int, max_rows, time_limit):
    if norm not in _NORMS:
        raise QnnRepairError(f"norm must be one of {_NORMS}, got {norm!r}")
    if not qmin < qmax:
        raise QnnRepairError(f"qmin must be below qmax, got qmin={qmin}, qmax={qmax}")
    if weight_int.size and (weight_int.min() < qmin or weight_int.max() > qmax):
        raise QnnRepairError(
            f"weight_int has values in [{weight_int.min()}, {weight_int.max()}], outside the grid "
            f"[{qmin}, {qmax}]: pass the qmin/qmax the weights were quantized with")
    if max_rows < 1:
        raise QnnRepairError(f"max_rows must be at least 1, got {max_rows}")
    if time_limit is not None and not time_limit >= 0:
        raise QnnRepairError(f"time_limit must be a non-negative number of seconds or None, "
                             f"got {time_limit}")


def _step_unit(scale, inputs: np.ndarray) -> float:
    """Typical change of an output caused by one integer step on one weight, for one input."""
    unit = float(np.mean(np.abs(scale)) * np.mean(np.abs(inputs))) if inputs.size else 0.0
    return unit if np.isfinite(unit) and unit > 0 else 1.0


# --------------------------------------------------------------------------------------------
# Output layer: classification margins


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
            steps (see the module comments).
        integer: solve the MILP (integrality on d) instead of rounding the LP relaxation.
        time_limit: seconds for HiGHS; when hit, the best feasible point is returned (or no
            change), with the status saying so.
        fit_bias: also give each chosen row a real bias delta.
        solver: HiGHS LP solver ("simplex", "ipm", ...).
    """
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
    _check_common(norm, qmin, qmax, q, max_rows, time_limit)

    logits = (h @ q.T.astype(np.float64)) * s + b
    rows_n = np.arange(n_inputs)
    gaps = logits[rows_n, labels][:, None] - logits  # gaps[n, k] = z_y - z_k
    gaps[rows_n, labels] = np.inf
    margins = gaps.min(axis=1) if n_classes > 1 else np.full(n_inputs, np.inf)
    failing = np.argmax(logits, axis=1) != labels
    unit = _step_unit(s[chosen] if len(chosen) else s, h)
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
        return float(slack.mean()) + lam * _norm(d, norm) if n_kept else lam * _norm(d, norm)

    zero_d = np.zeros((len(chosen), n_features), np.int64)
    zero_e = np.zeros(len(chosen))
    unchanged = evaluate(zero_d, zero_e)
    if len(chosen) == 0 or n_kept == 0 or n_classes < 2:
        return LPResult(zero_d, zero_e, "no_variables", unchanged, unchanged, unchanged, 0, 0,
                        0.0, lam, kappa, 0.0, zero_d.astype(np.float64), kept)

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
    core = _Core(
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
    # Internal objective = sum(xi / unit) + (lam * N / unit) * ||d|| = (N / unit) * objective.
    to_true = unit / n_kept
    solved = _solve(core, norm=norm, lam_internal=lam / to_true, integer=integer,
                    time_limit=time_limit, solver=solver)
    e = np.zeros(n_chosen)
    e[:n_bias] = solved.bias * unit
    d = solved.d.reshape(n_chosen, n_features)
    return LPResult(
        delta_weight=d, delta_bias=e, status=solved.status,
        objective_relaxed=solved.bound * to_true, objective_rounded=evaluate(d, e),
        objective_unchanged=unchanged, n_rows=solved.n_rows, n_cols=solved.n_cols,
        solve_seconds=solved.seconds, lam=lam, kappa=kappa, norm_relaxed=solved.norm_value,
        delta_weight_relaxed=solved.d_relaxed.reshape(n_chosen, n_features), rows_kept=kept,
    )


# --------------------------------------------------------------------------------------------
# Hidden neuron: match a target pre-activation (or its sign)


def _even_stride(n: int, max_rows: int) -> np.ndarray:
    """``max_rows`` indices spread evenly over ``range(n)`` (all of them when n <= max_rows)."""
    if n <= max_rows:
        return np.arange(n)
    return np.floor(np.arange(max_rows) * (n / max_rows)).astype(np.int64)


def solve_neuron_lp(inputs, target, weight_int, weight_scale: float, bias: float, qmin: int,
                    qmax: int, *, lam: float | None = None, norm: str = "l1",
                    mode: str = "match", kappa: float | None = None, integer: bool = False,
                    time_limit: float | None = None, max_rows: int = 1000,
                    fit_bias: bool = True, solver: str = DEFAULT_SOLVER,
                    delta_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> LPResult:
    """Change one neuron's integer weights so its pre-activation follows a target.

    Pre-activation ``a(n) = s * sum_j (q_j + d_j) x_nj + bias + e``.

    - mode "match": minimize ``sum_n |a(n) - target(n)| / N + lam * ||d||`` (residual split into
      two non-negative parts, one equality row per sample).
    - mode "sign" (the paper's variant): ``a(n) * sign(target(n)) + xi_n >= kappa``,
      ``xi_n >= 0``, minimize ``sum(xi) / N + lam * ||d||``. Rows with target exactly 0 have no
      sign to follow and are left out.

    Row cap: in "match" mode an even stride over the rows (rows usually come input-major, so the
    stride spreads over inputs and positions): the L1 objective is a mean over the distribution
    of rows, and an even sample estimates it without bias, while keeping only the largest
    residuals would fit the outliers and leave every other row free to get worse. In "sign" mode
    the rows with the wrong sign come first, then those nearest zero (:func:`select_rows`).

    Rounding caveat for "match": the relaxed regression typically moves every weight by a
    fraction of a step, and rounding to nearest gives most of that back (576 weights at 8 bit,
    mean |a - target|: relaxed 0.0019, rounded 0.0046, unchanged 0.0057). ``integer=True`` keeps
    the rounded point as its start, so it can only improve on it, time permitting.

    Args:
        inputs: (N, J) dequantized input the integer kernel sees (one row per sampled input or
            position, flattened patch for a conv channel).
        target: (N,) target pre-activation (e.g. the float model's).
        weight_int: (J,) integer weights; weight_scale, bias: the neuron's scale and real bias.
        delta_bounds: optional per-weight (lower, upper) integer bounds on d, intersected with
            the grid; e.g. the floor and ceiling of the float weight, so that the LP chooses each
            weight's rounding direction as AdaRound does.
        Other arguments as in :func:`solve_margin_lp`; kappa is used in "sign" mode only.
    """
    x = np.asarray(inputs, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    q = np.asarray(weight_int).reshape(-1)
    s = float(weight_scale)
    if x.ndim != 2 or x.shape[1] != q.shape[0] or t.shape != (x.shape[0],):
        raise QnnRepairError(f"inputs must be (N, J), target (N,), weight_int (J,); got "
                             f"{x.shape}, {t.shape}, {q.shape}")
    if mode not in ("match", "sign"):
        raise QnnRepairError(f"mode must be 'match' or 'sign', got {mode!r}")
    _check_common(norm, qmin, qmax, q, max_rows, time_limit)
    n_weights = q.shape[0]
    a0 = s * (x @ q.astype(np.float64)) + float(bias)
    unit = _step_unit(s, x)
    kappa = KAPPA_STEPS * unit if kappa is None else float(kappa)

    if mode == "match":
        kept = _even_stride(len(t), max_rows)
    else:
        sign = np.sign(t)
        signed = np.nonzero(sign != 0)[0]
        margin = sign[signed] * a0[signed]
        kept = signed[select_rows(margin, margin <= 0, max_rows)]
    n_kept = len(kept)
    lam = LAM_STEPS * unit / max(n_kept, 1) if lam is None else float(lam)

    def evaluate(d: np.ndarray, e: float) -> float:
        a = a0[kept] + s * (x[kept] @ d.astype(np.float64)) + e
        if mode == "match":
            loss = np.abs(a - t[kept])
        else:
            loss = np.maximum(0.0, kappa - np.sign(t[kept]) * a)
        return (float(loss.mean()) if n_kept else 0.0) + lam * _norm(d, norm)

    zero_d = np.zeros(n_weights, np.int64)
    unchanged = evaluate(zero_d, 0.0)
    if n_weights == 0 or n_kept == 0:
        return LPResult(zero_d, 0.0, "no_variables", unchanged, unchanged, unchanged, 0, 0, 0.0,
                        lam, kappa, 0.0, zero_d.astype(np.float64), kept)

    d_lower = np.clip(qmin - q, None, 0).astype(np.float64)
    d_upper = np.clip(qmax - q, 0, None).astype(np.float64)
    if delta_bounds is not None:
        d_lower = np.minimum(np.maximum(d_lower, delta_bounds[0]), 0)
        d_upper = np.maximum(np.minimum(d_upper, delta_bounds[1]), 0)
    row_factor = np.ones(n_kept) if mode == "match" else np.sign(t[kept])
    n_bias = 1 if fit_bias else 0
    coef = (s / unit) * x[kept] * row_factor[:, None]
    rows = np.arange(n_kept)
    if mode == "match":
        rhs = (t[kept] - a0[kept]) / unit
        # a - t = unit * (u - v): row  coef.d + e - u + v = rhs
        extra_cost = np.concatenate([np.zeros(n_bias), np.ones(2 * n_kept)])
        extra_rows = [rows, rows]
        extra_cols = [n_bias + rows, n_bias + n_kept + rows]
        extra_vals = [-np.ones(n_kept), np.ones(n_kept)]
        extra_x0 = np.concatenate([np.zeros(n_bias), np.maximum(-rhs, 0), np.maximum(rhs, 0)])
        row_lower, row_upper = rhs, rhs
    else:
        rhs = (kappa - row_factor * a0[kept]) / unit
        extra_cost = np.concatenate([np.zeros(n_bias), np.ones(n_kept)])
        extra_rows = [rows]
        extra_cols = [n_bias + rows]
        extra_vals = [np.ones(n_kept)]
        extra_x0 = np.concatenate([np.zeros(n_bias), np.maximum(rhs, 0)])
        row_lower, row_upper = rhs, np.full(n_kept, INF)
    if fit_bias:
        extra_rows.append(rows)
        extra_cols.append(np.zeros(n_kept, np.int64))
        extra_vals.append(row_factor)
    n_extra = len(extra_cost)
    core = _Core(
        n_rows=n_kept, row_lower=row_lower, row_upper=row_upper,
        d_lower=d_lower, d_upper=d_upper,
        d_rows=np.repeat(rows, n_weights), d_cols=np.tile(np.arange(n_weights), n_kept),
        d_vals=coef.reshape(-1),
        extra_cost=extra_cost,
        extra_lower=np.concatenate([np.full(n_bias, -INF), np.zeros(n_extra - n_bias)]),
        extra_upper=np.full(n_extra, INF),
        extra_rows=np.concatenate(extra_rows), extra_cols=np.concatenate(extra_cols),
        extra_vals=np.concatenate(extra_vals), extra_x0=extra_x0,
        bias_cols=np.arange(n_bias),
    )
    to_true = unit / n_kept
    # Most weights move in a "match" regression: auxiliary |d| columns beat the split there.
    solved = _solve(core, norm=norm, lam_internal=lam / to_true, integer=integer,
                    time_limit=time_limit, solver=solver, l1_split=mode != "match")
    e = float(solved.bias[0] * unit) if n_bias else 0.0
    return LPResult(
        delta_weight=solved.d, delta_bias=e, status=solved.status,
        objective_relaxed=solved.bound * to_true, objective_rounded=evaluate(solved.d, e),
        objective_unchanged=unchanged, n_rows=solved.n_rows, n_cols=solved.n_cols,
        solve_seconds=solved.seconds, lam=lam, kappa=kappa, norm_relaxed=solved.norm_value,
        delta_weight_relaxed=solved.d_relaxed, rows_kept=kept,
    )


# --------------------------------------------------------------------------------------------
# Many independent LPs


_FORMULATIONS = {
    "margin": solve_margin_lp,
    "solve_margin_lp": solve_margin_lp,
    "neuron": solve_neuron_lp,
    "solve_neuron_lp": solve_neuron_lp,
}


@dataclass(frozen=True)
class LPProblem:
    """One LP to solve: ``kind`` is "margin" or "neuron" (or the function's name)."""

    kind: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _FORMULATIONS:
            raise QnnRepairError(f"unknown LP kind {self.kind!r}: use 'margin' or 'neuron'")

    def __repr__(self) -> str:
        return f"LPProblem({self.kind!r}, {sorted(self.kwargs)})"


def _solve_problem(problem: LPProblem) -> LPResult:
    return _FORMULATIONS[problem.kind](**problem.kwargs)


def solve_many(problems: Sequence[LPProblem | tuple[str, Mapping[str, Any]]],
               n_workers: int = 1, *, mp_context: str = "spawn") -> list[LPResult]:
    """Solve independent LPs, in a process pool when ``n_workers > 1``; results in input order.

    Each solve is single-threaded and deterministic, so the results do not depend on
    ``n_workers`` (only ``solve_seconds`` does). The pool uses the "spawn" start method by
    default: safe with threads (torch) in the parent, and this module imports no torch.
    """
    items = [p if isinstance(p, LPProblem) else LPProblem(*p) for p in problems]
    if n_workers <= 1 or len(items) <= 1:
        return [_solve_problem(p) for p in items]
    context = multiprocessing.get_context(mp_context)
    with ProcessPoolExecutor(max_workers=min(n_workers, len(items)), mp_context=context) as pool:
        return list(pool.map(_solve_problem, items))
