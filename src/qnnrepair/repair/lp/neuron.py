"""One neuron's LP: its pre-activation follows a target, in L1 ("match") or in sign ("sign").

A neuron's pre-activation is linear in its own weights given the (dequantized) input the integer
kernel sees. The formulations "match" (match.py) and "sign" (sign.py) build this problem.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp.core import Core, check_common, norm_of, solve_core, step_unit
from qnnrepair.repair.lp.highs import DEFAULT_SOLVER, INF
from qnnrepair.repair.lp.result import (
    KAPPA_STEPS,
    LAM_STEPS,
    LPResult,
    even_stride,
    select_rows,
    solved_result,
    unchanged_result,
)


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
    check_common(norm, qmin, qmax, q, max_rows, time_limit)
    n_weights = q.shape[0]
    a0 = s * (x @ q.astype(np.float64)) + float(bias)
    unit = step_unit(s, x)
    kappa = KAPPA_STEPS * unit if kappa is None else float(kappa)

    if mode == "match":
        kept = even_stride(len(t), max_rows)
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
        return (float(loss.mean()) if n_kept else 0.0) + lam * norm_of(d, norm)

    zero_d = np.zeros(n_weights, np.int64)
    unchanged = evaluate(zero_d, 0.0)
    if n_weights == 0 or n_kept == 0:
        return unchanged_result(zero_d, 0.0, unchanged, lam, kappa, kept)

    core = _neuron_core(x[kept], t[kept], a0[kept], q, s, qmin, qmax, mode, kappa, unit,
                        fit_bias, delta_bounds)
    to_true = unit / n_kept
    # Most weights move in a "match" regression: auxiliary |d| columns beat the split there.
    # Its rows are dense eigen-directions, where presolve removes nothing: without it the
    # relaxations solved 25 % faster, to the same deltas (198 MobileNetV2 W4A8 neuron LPs).
    match = mode == "match"
    solved = solve_core(core, norm=norm, lam_internal=lam / to_true, integer=integer,
                        time_limit=time_limit, solver=solver, l1_split=not match,
                        presolve=not match)
    e = float(solved.bias[0] * unit) if fit_bias else 0.0
    return solved_result(solved, solved.d, e, evaluate(solved.d, e), unchanged, to_true, lam,
                         kappa, solved.d_relaxed, kept)


@dataclass(frozen=True, repr=False)
class NeuronProblem:
    """The arguments of :func:`solve_neuron_lp`, as one picklable problem.

    `bias_from` = (mean input (J,), mean residual): when given, the bias delta is not an LP
    variable but its L2-optimal value for the integer deltas d, ``mean residual - s * mean . d``
    (the rows of a summarized LP are centred, see repair/summary.py). `columns`: when given,
    only those weights may move (a column reduction for wide layers); the others stay.
    """

    inputs: np.ndarray
    target: np.ndarray
    weight_int: np.ndarray
    weight_scale: float
    bias: float
    qmin: int
    qmax: int
    lam: float | None = None
    norm: str = "l1"
    mode: str = "match"
    kappa: float | None = None
    integer: bool = False
    time_limit: float | None = None
    max_rows: int = 1000
    fit_bias: bool = True
    solver: str = DEFAULT_SOLVER
    delta_bounds: tuple[np.ndarray, np.ndarray] | None = None
    bias_from: tuple[np.ndarray, float] | None = None
    columns: np.ndarray | None = None

    def solve(self) -> LPResult:
        args = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("bias_from", "columns")}
        result = solve_neuron_lp(**args) if self.columns is None else \
            self._solve_on_columns(args)
        if self.bias_from is None:
            return result
        mean, residual_mean = self.bias_from
        shift = self.weight_scale * float(mean @ result.delta_weight)
        return replace(result, delta_bias=residual_mean - shift)

    def _solve_on_columns(self, args: dict) -> LPResult:
        """Only `columns` of the weights may move: the others' part of the pre-activation is
        moved into the target, and the deltas are written back at full width."""
        cols = np.asarray(self.columns)
        fixed = np.ones(len(self.weight_int), bool)
        fixed[cols] = False
        x, q = np.asarray(self.inputs, np.float64), np.asarray(self.weight_int)
        args.update(inputs=x[:, cols], weight_int=q[cols],
                     target=np.asarray(self.target) - self.weight_scale * (
                         x[:, fixed] @ q[fixed].astype(np.float64)))
        if self.delta_bounds is not None:
            args["delta_bounds"] = (self.delta_bounds[0][cols], self.delta_bounds[1][cols])
        result = solve_neuron_lp(**args)
        d, relaxed = np.zeros(len(q), np.int64), np.zeros(len(q))
        d[cols], relaxed[cols] = result.delta_weight, result.delta_weight_relaxed
        return replace(result, delta_weight=d, delta_weight_relaxed=relaxed)

    def __repr__(self) -> str:
        return (f"NeuronProblem(mode={self.mode!r}, rows={len(self.target)}, "
                f"weights={len(self.weight_int)})")


def _neuron_core(x, t, a0, q, s, qmin, qmax, mode, kappa, unit, fit_bias,
                 delta_bounds) -> Core:
    """The kept rows x (n, J), targets t and current pre-activations a0 as a Core: one
    equality row with two residual columns per row ("match"), or one margin row with a slack
    ("sign"); a bias column if asked."""
    n_kept, n_weights = x.shape
    d_lower = np.clip(qmin - q, None, 0).astype(np.float64)
    d_upper = np.clip(qmax - q, 0, None).astype(np.float64)
    if delta_bounds is not None:
        d_lower = np.minimum(np.maximum(d_lower, delta_bounds[0]), 0)
        d_upper = np.maximum(np.minimum(d_upper, delta_bounds[1]), 0)
    row_factor = np.ones(n_kept) if mode == "match" else np.sign(t)
    n_bias = 1 if fit_bias else 0
    coef = (s / unit) * x * row_factor[:, None]
    rows = np.arange(n_kept)
    if mode == "match":
        rhs = (t - a0) / unit
        # a - t = unit * (u - v): row  coef.d + e - u + v = rhs
        extra_cost = np.concatenate([np.zeros(n_bias), np.ones(2 * n_kept)])
        extra_rows = [rows, rows]
        extra_cols = [n_bias + rows, n_bias + n_kept + rows]
        extra_vals = [-np.ones(n_kept), np.ones(n_kept)]
        extra_x0 = np.concatenate([np.zeros(n_bias), np.maximum(-rhs, 0), np.maximum(rhs, 0)])
        row_lower, row_upper = rhs, rhs
    else:
        rhs = (kappa - row_factor * a0) / unit
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
    core = Core(
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
    return core
