"""A thin, quiet driver around highspy for the repair LPs (numpy + highspy only, no torch).

The formulations build a :class:`SparseLP` (``core.py``; rows in CSR form, straight from numpy)
and hand it to :class:`HighsSolver`, which passes it to HiGHS in one call, runs it silently on one
thread and reads back the model status, the primal values and the bounds HiGHS proved.

HiGHS logging is off; set the environment variable ``QNNREPAIR_HIGHS_LOG=1`` to see it when
debugging a formulation.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from dataclasses import dataclass

import highspy
import numpy as np

INF = highspy.kHighsInf

# The LP solver for the relaxations: dual simplex. Measured (HiGHS 1.16, one thread, CPU seconds
# of the whole call, L1, shared 2-core machine) on the sizes the repair produces:
#   hidden neuron, 576 weights x 1,000 dense rows, "sign":  simplex 0.26 s, ipm (IPX) 0.66 s
#   hidden neuron, 576 weights x 1,000 dense rows, "match": simplex 3.0 s,  ipm 3.2 s
#   hidden neuron, 144 weights x 1,000 dense rows, "match": simplex 0.39 s, ipm 0.23 s
#   output layer, 10 rows x 64 features, 999 pair rows:     simplex 0.10 s, ipm 0.21 s
#   output layer, 1 row x 512 features, 1,000 pair rows:    simplex 0.31 s, ipm 0.53 s
# Starting from "change nothing", the simplex needs only a few pivots when the optimum changes
# few weights (margin, sign), and its vertex solutions keep the other deltas exactly zero; where
# most weights move (match), the two are about even. Pass solver="ipm" to override.
DEFAULT_SOLVER = "simplex"

_banner_lock = threading.Lock()
_banner_done = False


@contextlib.contextmanager
def _stdout_fd_silenced():
    """Send what C code writes to file descriptor 1 to /dev/null for the duration.

    HiGHS prints its copyright banner on stdout from C++ when the first ``Highs`` object of a
    process is built, before any option (``output_flag``) can be set. The library never prints,
    and every worker process of ``solve_many`` would print it once, so the first construction in a
    process runs with fd 1 pointed at /dev/null. Best effort: where this cannot be done (no fd 1,
    no libc), the banner simply appears.
    """
    try:
        libc = ctypes.CDLL(None)
        sys.stdout.flush()
        libc.fflush(None)
        saved = os.dup(1)
    except (OSError, AttributeError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def new_highs() -> highspy.Highs:
    """A ``highspy.Highs`` with logging off, one thread and a fixed random seed.

    One thread per solve: the repair runs many independent LPs side by side in a process pool,
    which uses the cores better than HiGHS's threads on one LP, and keeps results deterministic.
    """
    global _banner_done
    with _banner_lock:
        if _banner_done:
            highs = highspy.Highs()
        else:
            with _stdout_fd_silenced():
                highs = highspy.Highs()
            _banner_done = True
    highs.setOptionValue("output_flag", os.environ.get("QNNREPAIR_HIGHS_LOG") == "1")
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    return highs


@dataclass(frozen=True)
class SparseLP:
    """minimize ``col_cost @ x`` s.t. ``row_lower <= A x <= row_upper`` and
    ``col_lower <= x <= col_upper``.

    ``A`` is given row-wise (CSR): the entries of row ``i`` are ``index[start[i]:start[i+1]]`` with
    values ``value[start[i]:start[i+1]]``. ``integer`` marks the columns that must be integral in
    MILP mode.
    """

    col_cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    integer: np.ndarray

    @property
    def n_cols(self) -> int:
        return len(self.col_cost)

    @property
    def n_rows(self) -> int:
        return len(self.row_lower)

    @classmethod
    def from_triplets(cls, rows, cols, vals, n_rows, *, col_cost, col_lower, col_upper,
                      row_lower, row_upper, integer) -> SparseLP:
        """Build from COO triplets; entries of one row keep their given order."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=n_rows)
        start = np.zeros(n_rows + 1, dtype=np.int32)
        np.cumsum(counts, out=start[1:])
        return cls(
            col_cost=np.ascontiguousarray(col_cost, dtype=np.float64),
            col_lower=np.ascontiguousarray(col_lower, dtype=np.float64),
            col_upper=np.ascontiguousarray(col_upper, dtype=np.float64),
            row_lower=np.ascontiguousarray(row_lower, dtype=np.float64),
            row_upper=np.ascontiguousarray(row_upper, dtype=np.float64),
            start=start,
            index=np.ascontiguousarray(np.asarray(cols)[order], dtype=np.int32),
            value=np.ascontiguousarray(np.asarray(vals)[order], dtype=np.float64),
            integer=np.ascontiguousarray(integer, dtype=bool),
        )


@dataclass(frozen=True)
class HighsOutcome:
    """What one HiGHS run gave back.

    ``status`` is the model status in snake case ("optimal", "time_limit", ...); ``x`` is the
    primal solution, or None when HiGHS has no feasible one; ``objective`` its objective;
    ``bound`` the best proven lower bound (the LP optimum, or the MILP dual bound).
    """

    status: str
    x: np.ndarray | None
    objective: float
    bound: float
    seconds: float


def _status_name(highs: highspy.Highs, status) -> str:
    text = highs.modelStatusToString(status)
    return "_".join(text.lower().replace("reached", "").replace("-", " ").split())


class HighsSolver:
    """One HiGHS instance holding one :class:`SparseLP`, as an LP (``solver``) or a MILP."""

    def __init__(self, lp: SparseLP, *, integer: bool = False, solver: str = DEFAULT_SOLVER,
                 time_limit: float | None = None, mip_rel_gap: float = 1e-6,
                 presolve: bool = True) -> None:
        self.lp = lp
        self.integer = bool(integer and lp.integer.any())
        self.highs = new_highs()
        if not self.integer:
            self.highs.setOptionValue("solver", solver)
        if not presolve:
            self.highs.setOptionValue("presolve", "off")
        if time_limit is not None:
            self.highs.setOptionValue("time_limit", float(max(time_limit, 0.0)))
        if self.integer:
            # The objectives are averages of slacks and tiny per-step penalties: an absolute gap
            # of 1e-6 (the HiGHS default) would stop before ties are broken.
            self.highs.setOptionValue("mip_abs_gap", 0.0)
            self.highs.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        integrality = (lp.integer if self.integer else np.zeros(lp.n_cols, bool)).astype(np.int32)
        status = self.highs.passModel(
            lp.n_cols, lp.n_rows, len(lp.value), int(highspy.MatrixFormat.kRowwise),
            int(highspy.ObjSense.kMinimize), 0.0,
            lp.col_cost, lp.col_lower, lp.col_upper, lp.row_lower, lp.row_upper,
            lp.start[:-1], lp.index, lp.value, integrality,
        )
        if status == highspy.HighsStatus.kError:
            raise RuntimeError("HiGHS rejected the LP model (passModel returned an error)")

    def set_start(self, x: np.ndarray) -> None:
        """Offer a feasible point as a starting incumbent (MILP)."""
        solution = highspy.HighsSolution()
        solution.col_value = np.asarray(x, dtype=np.float64)
        self.highs.setSolution(solution)

    def run(self) -> HighsOutcome:
        started = time.perf_counter()
        self.highs.run()
        seconds = time.perf_counter() - started
        model_status = self.highs.getModelStatus()
        info = self.highs.getInfo()
        has_x = info.primal_solution_status == highspy.kSolutionStatusFeasible
        x = np.asarray(self.highs.getSolution().col_value, dtype=np.float64) if has_x else None
        objective = float(info.objective_function_value) if has_x else float("nan")
        if self.integer:
            bound = float(info.mip_dual_bound)
        else:
            optimal = model_status == highspy.HighsModelStatus.kOptimal
            bound = objective if optimal else float("nan")
        return HighsOutcome(_status_name(self.highs, model_status), x, objective, bound, seconds)
