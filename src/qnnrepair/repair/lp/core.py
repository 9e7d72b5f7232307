"""The LP core shared by every formulation: assembly, norm encodings, rounding, MILP.

Pure numpy + highspy (no torch), so that LP worker processes start fast. A formulation (margin.py,
neuron.py) describes its LP as a :class:`Core` and calls :func:`solve_core`.

Variables of every LP: an integer delta ``d`` on each weight of the chosen neurons, bounded so
that ``q + d`` stays on the grid ``[qmin, qmax]`` (never wrapped around), and one real bias delta
``e`` per chosen neuron (docs/DESIGN.md, section 4).

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

import time
from dataclasses import dataclass

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp.highs import INF, HighsSolver, SparseLP
from qnnrepair.repair.lp.result import NORMS


@dataclass
class Core:
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


def _assemble(core: Core, norm: str, lam_internal: float, l1_split: bool) -> _Layout:
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


def _refit_extras(core: Core, d: np.ndarray, time_limit) -> tuple[np.ndarray | None, float]:
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
class Solved:
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


def _point(layout: _Layout, core: Core, d: np.ndarray, x_extra: np.ndarray) -> np.ndarray:
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


def solve_core(core: Core, *, norm: str, lam_internal: float, integer: bool, time_limit,
           solver: str, l1_split: bool = True, presolve: bool = True) -> Solved:
    """Solve the LP relaxation, round d to the grid, re-fit the bias deltas; for a MILP, go on
    from the better of "no change" and that rounded point, in the time left. `presolve=False`
    skips HiGHS's presolve for the relaxation (dense LPs where it finds nothing to remove)."""
    layout = _assemble(core, norm, lam_internal, l1_split)
    lp = layout.lp
    started = time.perf_counter()
    relaxed = HighsSolver(lp, solver=solver, time_limit=time_limit, presolve=presolve).run()
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
        return Solved(d_relaxed, d, bias, status, bound, norm_value, seconds, lp.n_rows,
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
    return Solved(d_relaxed, d, x[layout.bias], outcome.status,
                   max(bounds) if bounds else float("nan"), norm_value, seconds, lp.n_rows,
                   lp.n_cols)


def norm_of(d: np.ndarray, norm: str) -> float:
    if d.size == 0:
        return 0.0
    return float(np.abs(d).sum()) if norm == "l1" else float(np.abs(d).max())


def check_common(norm, qmin, qmax, weight_int, max_rows, time_limit):
    if norm not in NORMS:
        raise QnnRepairError(f"norm must be one of {NORMS}, got {norm!r}")
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


def step_unit(scale, inputs: np.ndarray) -> float:
    """Typical change of an output caused by one integer step on one weight, for one input."""
    unit = float(np.mean(np.abs(scale)) * np.mean(np.abs(inputs))) if inputs.size else 0.0
    return unit if np.isfinite(unit) and unit > 0 else 1.0
