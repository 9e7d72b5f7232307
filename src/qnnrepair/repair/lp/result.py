"""What every repair LP returns, the defaults in step units, and which rows an LP keeps.

Numpy only (no torch): LP worker processes import this package and start fast without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qnnrepair.errors import QnnRepairError

# Defaults, in units of one step (see the docstring of qnnrepair.repair.lp.core).
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

NORMS = ("l1", "linf")


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


def unchanged_result(zero_d, zero_e, unchanged: float, lam: float, kappa: float,
                     kept: np.ndarray) -> LPResult:
    """The result of an LP with nothing to change (no variables or no rows)."""
    return LPResult(zero_d, zero_e, "no_variables", unchanged, unchanged, unchanged, 0, 0, 0.0,
                    lam, kappa, 0.0, zero_d.astype(np.float64), kept)


def solved_result(solved, d, e, rounded: float, unchanged: float, to_true: float, lam: float,
                  kappa: float, d_relaxed: np.ndarray, kept: np.ndarray) -> LPResult:
    """An LPResult from a solved core (core.Solved), in true units (`to_true` per internal
    unit of objective), with the rounded deltas d, e and their re-evaluated objective."""
    return LPResult(
        delta_weight=d, delta_bias=e, status=solved.status,
        objective_relaxed=solved.bound * to_true, objective_rounded=rounded,
        objective_unchanged=unchanged, n_rows=solved.n_rows, n_cols=solved.n_cols,
        solve_seconds=solved.seconds, lam=lam, kappa=kappa, norm_relaxed=solved.norm_value,
        delta_weight_relaxed=d_relaxed, rows_kept=kept,
    )


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


def even_stride(n: int, max_rows: int) -> np.ndarray:
    """``max_rows`` indices spread evenly over ``range(n)`` (all of them when n <= max_rows)."""
    if n <= max_rows:
        return np.arange(n)
    return np.floor(np.arange(max_rows) * (n / max_rows)).astype(np.int64)
