"""Tests of the repair LPs (qnnrepair.repair.lp): brute force, grid, fixes, time limits, pool.

Every numeric check names its tolerance and prints the value it got.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp import (
    LocalPool,
    MarginProblem,
    NeuronProblem,
    get_formulation,
    select_rows,
    solve_many,
    solve_margin_lp,
    solve_neuron_lp,
)

EXACT = 1e-9  # objectives recomputed in float64 from the same integers


def grid(bits: int) -> tuple[int, int]:
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax


# --------------------------------------------------------------------------------------------
# Independent references


def margin_objective(h, labels, weight, s, b, kappa, lam, norm, d):
    """sum_n max(0, kappa - min_{k != y} (z_y - z_k)) / N + lam * ||d||, by plain loops."""
    logits = (h @ weight.T) * s + b
    total = 0.0
    for n, y in enumerate(labels):
        margin = min(logits[n, y] - logits[n, k] for k in range(len(s)) if k != y)
        total += max(0.0, kappa - margin)
    penalty = np.abs(d).sum() if norm == "l1" else np.abs(d).max()
    return total / len(labels) + lam * penalty


def brute_force_margin(h, labels, q, s, b, rows, qmin, qmax, kappa, lam, norm):
    """Best objective over every integer delta of the chosen rows (no bias delta)."""
    ranges = [range(qmin - v, qmax - v + 1) for v in q[rows].reshape(-1)]
    best = np.inf
    for flat in itertools.product(*ranges):
        d = np.array(flat).reshape(len(rows), -1)
        weight = q.astype(float)
        weight[rows] += d
        best = min(best, margin_objective(h, labels, weight, s, b, kappa, lam, norm, d))
    return best


def brute_force_match(x, target, q, s, bias, qmin, qmax, lam, norm):
    """Best of mean |a - target| + lam ||d|| over integer d, the bias delta at its optimum
    (the median of the residuals minimizes a mean absolute deviation)."""
    best = np.inf
    for flat in itertools.product(*[range(qmin - v, qmax - v + 1) for v in q]):
        d = np.array(flat)
        residual = target - (s * x @ (q + d) + bias)
        e = np.median(residual)
        penalty = np.abs(d).sum() if norm == "l1" else np.abs(d).max()
        best = min(best, float(np.abs(residual - e).mean()) + lam * penalty)
    return best


def tiny_margin_case(seed: int):
    rng = np.random.default_rng(seed)
    n_inputs, n_features, n_classes = 8, 2, 3
    h = rng.uniform(0, 2, size=(n_inputs, n_features))
    q = rng.integers(-3, 4, size=(n_classes, n_features))
    s = np.array([0.25, 0.3, 0.2])
    b = rng.normal(scale=0.2, size=n_classes)
    labels = rng.integers(0, n_classes, size=n_inputs)
    return h, labels, q, s, b


# --------------------------------------------------------------------------------------------
# Brute force on tiny cases


@pytest.mark.parametrize("norm", ["l1", "linf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margin_milp_matches_brute_force(seed, norm):
    h, labels, q, s, b = tiny_margin_case(seed)
    qmin, qmax = grid(3)
    rows = [0, 2]
    kappa, lam = 0.3, 0.01
    best = brute_force_margin(h, labels, q, s, b, rows, qmin, qmax, kappa, lam, norm)
    milp = solve_margin_lp(h, labels, q, s, b, rows, qmin, qmax, kappa=kappa, lam=lam,
                           norm=norm, integer=True, fit_bias=False)
    relaxed = solve_margin_lp(h, labels, q, s, b, rows, qmin, qmax, kappa=kappa, lam=lam,
                              norm=norm, fit_bias=False)
    weight = q.astype(float)
    weight[rows] += milp.delta_weight
    recomputed = margin_objective(h, labels, weight, s, b, kappa, lam, norm, milp.delta_weight)
    print(f"brute {best:.12f} milp {milp.objective_rounded:.12f} recomputed {recomputed:.12f} "
          f"relaxed {relaxed.objective_relaxed:.12f} status {milp.status}")
    assert milp.status == "optimal"
    assert abs(milp.objective_rounded - best) <= EXACT
    assert abs(recomputed - best) <= EXACT
    assert relaxed.objective_relaxed <= best + EXACT
    assert milp.objective_relaxed <= best + EXACT
    # The rounded relaxation is a feasible integer point: never below the optimum.
    assert relaxed.objective_rounded >= best - EXACT


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_neuron_match_milp_with_bias_matches_brute_force(norm):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 3))
    q = np.array([1, -2, 3])
    target = 0.4 * x @ np.array([0.5, -0.2, 1.7]) + 0.1 + rng.normal(scale=0.05, size=9)
    qmin, qmax = grid(3)
    lam = 0.005
    best = brute_force_match(x, target, q, 0.4, 0.1, qmin, qmax, lam, norm)
    milp = solve_neuron_lp(x, target, q, 0.4, 0.1, qmin, qmax, lam=lam, norm=norm,
                           integer=True)
    relaxed = solve_neuron_lp(x, target, q, 0.4, 0.1, qmin, qmax, lam=lam, norm=norm)
    print(f"brute {best:.12f} milp {milp.objective_rounded:.12f} "
          f"relaxed {relaxed.objective_relaxed:.12f}")
    assert abs(milp.objective_rounded - best) <= 1e-8
    assert relaxed.objective_relaxed <= best + EXACT


def test_neuron_sign_milp_matches_brute_force():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 3))
    target = rng.normal(size=10)
    q = np.array([0, 2, -1])
    qmin, qmax = grid(3)
    kappa, lam, s, bias = 0.2, 0.01, 0.3, -0.05
    best = np.inf
    for flat in itertools.product(*[range(qmin - v, qmax - v + 1) for v in q]):
        d = np.array(flat)
        a = s * x @ (q + d) + bias
        best = min(best, np.maximum(0, kappa - np.sign(target) * a).mean() + lam * abs(d).sum())
    milp = solve_neuron_lp(x, target, q, s, bias, qmin, qmax, mode="sign", kappa=kappa, lam=lam,
                           integer=True, fit_bias=False)
    print(f"brute {best:.12f} milp {milp.objective_rounded:.12f}")
    assert abs(milp.objective_rounded - best) <= EXACT


# --------------------------------------------------------------------------------------------
# The grid is never left


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    bits=st.integers(2, 4),
    n_features=st.integers(1, 5),
    n_inputs=st.integers(1, 12),
    norm=st.sampled_from(["l1", "linf"]),
    kind=st.sampled_from(["margin", "match", "sign"]),
)
def test_rounded_solution_stays_on_grid(seed, bits, n_features, n_inputs, norm, kind):
    rng = np.random.default_rng(seed)
    qmin, qmax = grid(bits)
    # Weights piled up at the edges of the grid, where rounding up or down could leave it.
    values = np.array([qmin, qmin + 1, 0, qmax - 1, qmax])
    scale = rng.uniform(0.01, 2.0)
    x = rng.normal(scale=3.0, size=(n_inputs, n_features))
    if kind == "margin":
        q = rng.choice(values, size=(3, n_features))
        labels = rng.integers(0, 3, size=n_inputs)
        result = solve_margin_lp(x, labels, q, np.full(3, scale), rng.normal(size=3), [0, 1],
                                 qmin, qmax, norm=norm)
        changed = q[[0, 1]] + result.delta_weight
    else:
        q = rng.choice(values, size=n_features)
        target = rng.normal(scale=5.0, size=n_inputs)
        result = solve_neuron_lp(x, target, q, scale, 0.0, qmin, qmax, norm=norm, mode=kind)
        changed = q + result.delta_weight
    assert np.issubdtype(result.delta_weight.dtype, np.integer)
    assert changed.min() >= qmin and changed.max() <= qmax, (changed, qmin, qmax)
    # The rounded objective is that of an integer point: never below the relaxation.
    if result.status == "optimal":
        gap = result.objective_rounded - result.objective_relaxed
        print(f"rounding gap {gap:.3g}")
        assert gap >= -1e-9 * max(1.0, abs(result.objective_relaxed))


# --------------------------------------------------------------------------------------------
# Margin LP: fixes a failing input, keeps the passing ones


def correct_after(h, labels, q, s, b, rows, result):
    weight = q.astype(float)
    weight[rows] += result.delta_weight
    bias = b.copy()
    bias[rows] += result.delta_bias
    return np.argmax((h @ weight.T) * s + bias, axis=1) == labels


@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("integer", [False, True])
def test_margin_lp_fixes_failing_input_and_keeps_passing(fit_bias, integer):
    q = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2]])
    s = np.full(3, 0.5)
    b = np.zeros(3)
    h = np.array([
        [1.0, 1.2, 0.0],  # label 0, logits (1.0, 1.2, 0): failing
        [2.0, 0.0, 0.0],  # passing
        [0.0, 2.0, 0.0],  # passing
        [0.0, 0.0, 2.0],  # passing
        [0.3, 1.5, 0.0],  # label 1, passing with margin 1.2
    ])
    labels = np.array([0, 0, 1, 2, 1])
    before = np.argmax((h @ q.T) * s + b, axis=1) == labels
    assert before.tolist() == [False, True, True, True, True]
    result = solve_margin_lp(h, labels, q, s, b, [0], -7, 7, kappa=0.2, fit_bias=fit_bias,
                             integer=integer)
    after = correct_after(h, labels, q, s, b, [0], result)
    print(result, result.delta_weight, result.delta_bias, after)
    assert result.status == "optimal"
    assert after.all()
    assert result.objective_rounded < result.objective_unchanged


def test_margin_lp_repairs_a_random_layer():
    rng = np.random.default_rng(0)
    n_inputs, n_features, n_classes = 300, 16, 5
    h = np.maximum(rng.normal(size=(n_inputs, n_features)), 0)
    q = rng.integers(-7, 8, size=(n_classes, n_features))
    s = np.full(n_classes, 0.05)
    b = np.zeros(n_classes)
    labels = np.argmax(h @ (q + rng.integers(-2, 3, size=q.shape)).T, axis=1)
    result = solve_margin_lp(h, labels, q, s, b, [0, 2], -7, 7)
    before = np.argmax((h @ q.T) * s + b, axis=1) == labels
    after = correct_after(h, labels, q, s, b, [0, 2], result)
    print(f"accuracy {before.mean():.3f} -> {after.mean():.3f}; {result}")
    assert after.mean() >= before.mean() + 0.05, "expected at least 5 points of accuracy"
    assert result.objective_relaxed <= result.objective_rounded <= result.objective_unchanged


def test_margin_lp_drops_constant_rows():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(20, 4))
    labels = rng.integers(0, 4, size=20)
    q = rng.integers(-3, 4, size=(4, 4))
    result = solve_margin_lp(h, labels, q, np.ones(4), np.zeros(4), [1], -7, 7, norm="l1")
    expected = int(np.where(labels == 1, 3, 1).sum())  # (K-1) rows if y is chosen, else one
    print(f"rows {result.n_rows}, expected {expected}")
    assert result.n_rows == expected


# --------------------------------------------------------------------------------------------
# Neuron LP


@pytest.mark.parametrize("integer", [False, True])
def test_match_recovers_planted_integer_weights(integer):
    rng = np.random.default_rng(5)
    qmin, qmax = grid(4)
    x = rng.normal(size=(200, 8))
    q_true = rng.integers(qmin + 2, qmax - 1, size=8)
    q = q_true + rng.integers(-2, 3, size=8)
    s, bias = 0.07, 0.3
    target = s * x @ q_true + bias
    result = solve_neuron_lp(x, target, q, s, bias, qmin, qmax, mode="match", integer=integer)
    print(result, result.delta_weight, q_true - q, result.delta_bias)
    np.testing.assert_array_equal(result.delta_weight, q_true - q)
    assert abs(result.delta_bias) <= 1e-9, f"bias delta {result.delta_bias}"
    assert result.objective_rounded <= result.lam * np.abs(q_true - q).sum() + 1e-9


def test_linf_bounds_every_delta_by_t():
    rng = np.random.default_rng(6)
    qmin, qmax = grid(4)
    x = rng.normal(size=(100, 6))
    q_true = np.array([3, -2, 0, 5, -6, 1])
    q = q_true + np.array([2, -1, 0, 1, 3, -3])
    target = 0.1 * x @ q_true
    result = solve_neuron_lp(x, target, q, 0.1, 0.0, qmin, qmax, norm="linf")
    t = result.norm_relaxed
    largest = np.abs(result.delta_weight_relaxed).max()
    print(f"t {t:.9f}, max |d| relaxed {largest:.9f}, rounded {result.delta_weight}")
    assert np.all(np.abs(result.delta_weight_relaxed) <= t + 1e-7)
    assert abs(largest - t) <= 1e-7, "t is minimized, so it equals the largest |d|"
    assert np.all(np.abs(result.delta_weight) <= np.rint(t))


def test_sign_mode_fixes_wrong_signs():
    rng = np.random.default_rng(7)
    x = np.abs(rng.normal(size=(50, 5)))
    q = np.array([1, 1, 1, 1, 1])
    target = x @ np.array([2.0, -3.0, 1.0, -1.0, 0.5])
    before = np.sign(0.2 * x @ q) == np.sign(target)
    result = solve_neuron_lp(x, target, q, 0.2, 0.0, -7, 7, mode="sign")
    after = np.sign(0.2 * x @ (q + result.delta_weight) + result.delta_bias) == np.sign(target)
    print(f"signs right {before.mean():.2f} -> {after.mean():.2f}, {result}")
    assert after.mean() > before.mean()


# --------------------------------------------------------------------------------------------
# Time limits


def slow_milp_case():
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(300, 16)), 0)
    q = rng.integers(-7, 8, size=(5, 16))
    labels = np.argmax(h @ (q + rng.integers(-2, 3, size=q.shape)).T, axis=1)
    return {"features": h, "labels": labels, "weight_int": q, "weight_scale": np.full(5, 0.05),
            "bias": np.zeros(5), "neurons": [0, 2], "qmin": -7, "qmax": 7}


def test_time_limit_hit_in_milp_returns_best_point():
    case = slow_milp_case()  # the MILP runs for over 30 s when left alone
    started = time.perf_counter()
    result = solve_margin_lp(**case, integer=True, time_limit=0.2)
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.2f}s {result}")
    assert result.status == "time_limit"  # HiGHS stopped at its limit, not at the optimum
    changed = case["weight_int"][[0, 2]] + result.delta_weight
    assert changed.min() >= -7 and changed.max() <= 7
    # It starts from the better of "no change" and the rounded relaxation.
    assert result.objective_rounded <= result.objective_unchanged + EXACT
    assert result.objective_relaxed <= result.objective_rounded + EXACT


def test_time_limit_without_solution_changes_nothing():
    result = solve_margin_lp(**slow_milp_case(), time_limit=0.0)
    print(result)
    assert result.status == "time_limit_no_solution"
    assert not result.changed
    assert result.objective_rounded == result.objective_unchanged


# --------------------------------------------------------------------------------------------
# Row selection


def test_select_rows_keeps_failing_first_then_nearest_boundary():
    margins = np.array([0.5, -1.0, 2.0, -0.1, 0.05, 3.0, -2.0])
    failing = margins < 0
    assert select_rows(margins, failing, 5).tolist() == [0, 1, 3, 4, 6]
    # Too many failing inputs: the failing ones nearest the boundary first.
    assert select_rows(margins, failing, 2).tolist() == [1, 3]
    assert select_rows(margins, failing, 100).tolist() == list(range(7))
    # Inputs with several rows count all of them.
    rows = np.array([1, 3, 1, 3, 2, 1, 3])
    assert select_rows(margins, failing, 11, rows).tolist() == [1, 3, 4, 6]


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), max_rows=st.integers(1, 80))
def test_select_rows_properties(seed, n, max_rows):
    rng = np.random.default_rng(seed)
    margins = rng.normal(size=n)
    failing = margins < rng.uniform(-0.5, 0.5)
    rows = rng.integers(1, 4, size=n)
    kept = select_rows(margins, failing, max_rows, rows)
    dropped = np.setdiff1d(np.arange(n), kept)
    assert len(kept) >= 1 and np.all(np.diff(kept) > 0)
    assert rows[kept].sum() <= max(max_rows, rows[kept[0]])
    if dropped.size and failing[dropped].any():
        assert failing[kept].all(), "a failing input was dropped while a passing one was kept"
    passing_kept = kept[~failing[kept]]
    passing_dropped = dropped[~failing[dropped]]
    if passing_kept.size and passing_dropped.size:
        assert np.abs(margins[passing_kept]).max() <= np.abs(margins[passing_dropped]).min()


# --------------------------------------------------------------------------------------------
# Many LPs


def many_problems():
    rng = np.random.default_rng(8)
    problems = []
    for i in range(2):
        h, labels, q, s, b = tiny_margin_case(10 + i)
        problems.append(MarginProblem(h, labels, q, s, b, neurons=(i,), qmin=-3, qmax=3))
    for mode in ("match", "sign"):
        x = rng.normal(size=(40, 6))
        problems.append(NeuronProblem(x, x @ rng.normal(size=6), rng.integers(-3, 4, size=6),
                                      0.3, 0.0, qmin=-3, qmax=3, mode=mode))
    return problems


def test_solve_many_same_in_serial_and_in_a_pool():
    problems = many_problems()
    serial = solve_many(problems, n_workers=1)
    pooled = solve_many(problems, n_workers=2)
    assert len(serial) == len(pooled) == len(problems)
    for one, two in zip(serial, pooled):
        print(one, two)
        for name in one.__dataclass_fields__:
            if name == "solve_seconds":
                continue
            np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_local_pool_keeps_its_workers_across_calls_until_closed():
    problems = many_problems()
    with LocalPool(n_workers=2) as pool:
        first = pool.solve(problems)
        workers = {p.pid for p in pool._pool._processes.values()}
        second = pool.solve(problems)
        assert {p.pid for p in pool._pool._processes.values()} == workers
    assert pool._pool is None  # closed by the with block; a new call starts new workers
    assert [r.delta_weight.tolist() for r in first] == [r.delta_weight.tolist() for r in second]
    assert len(pool.solve(problems)) == len(problems)
    pool.close()


def test_problems_solve_as_their_functions_do():
    for problem in many_problems():
        via_problem = problem.solve()
        if isinstance(problem, MarginProblem):
            direct = solve_margin_lp(problem.features, problem.labels, problem.weight_int,
                                     problem.weight_scale, problem.bias, problem.neurons,
                                     problem.qmin, problem.qmax)
        else:
            direct = solve_neuron_lp(problem.inputs, problem.target, problem.weight_int,
                                     problem.weight_scale, problem.bias, problem.qmin,
                                     problem.qmax, mode=problem.mode)
        np.testing.assert_array_equal(via_problem.delta_weight, direct.delta_weight)
        assert via_problem.objective_rounded == direct.objective_rounded


def test_unknown_formulation_is_refused_with_the_known_ones():
    with pytest.raises(QnnRepairError, match="unknown formulation 'quadratic'.*match, sign"):
        get_formulation("quadratic", output=False)
    with pytest.raises(QnnRepairError, match="unknown formulation 'margin' for hidden"):
        get_formulation("margin", output=False)


# --------------------------------------------------------------------------------------------
# Input checks and quietness


def test_weights_off_the_grid_are_rejected():
    with pytest.raises(QnnRepairError, match="outside the grid"):
        solve_neuron_lp(np.ones((3, 2)), np.ones(3), np.array([9, 0]), 0.1, 0.0, -7, 7)
    with pytest.raises(QnnRepairError, match="norm"):
        solve_neuron_lp(np.ones((3, 2)), np.ones(3), np.array([1, 0]), 0.1, 0.0, -7, 7,
                        norm="l2")


def test_highs_prints_nothing():
    code = ("import numpy as np; from qnnrepair.repair.lp import solve_neuron_lp; "
            "solve_neuron_lp(np.eye(3), np.ones(3), np.zeros(3, int), 0.1, 0.0, -7, 7, "
            "integer=True)")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"printed: {done.stdout!r}"


def test_rounding_direction_bounds_match_brute_force():
    """With each d_j restricted to {0, 1} or {-1, 0} (the L1 norm is then linear), the MILP
    optimum equals enumeration of every rounding choice."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 4))
    q = np.array([1, -2, 0, 3])
    lower, upper = np.array([0, -1, 0, -1]), np.array([1, 0, 1, 0])
    target = 0.1 * x @ (q + np.array([1, -1, 0, 0])) + 0.05
    result = solve_neuron_lp(x, target, q, 0.1, 0.0, -7, 7, integer=True, fit_bias=False,
                                delta_bounds=(lower, upper), lam=1e-4)
    best = min(
        (np.abs(0.1 * x @ (q + np.array(d)) - target).mean() + 1e-4 * np.abs(d).sum(), d)
        for d in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(lower, upper)]))
    print(f"MILP {result.objective_rounded:.6f} brute force {best[0]:.6f}")
    assert result.objective_rounded == pytest.approx(best[0], abs=1e-9)
    assert np.all(result.delta_weight >= lower) and np.all(result.delta_weight <= upper)


def test_column_reduction_moves_only_the_chosen_weights_and_keeps_the_objective():
    """A NeuronProblem restricted to `columns` solves the same L1 match with the other weights
    fixed: deltas elsewhere are zero, and its objectives hold at full width."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 12))
    q = rng.integers(-3, 4, 12)
    target = 0.3 * x @ (q + rng.integers(-2, 3, 12)) + 0.1
    cols = np.array([1, 4, 7, 9])
    reduced = NeuronProblem(x, target, q, 0.3, 0.0, qmin=-7, qmax=7, columns=cols).solve()
    whole = NeuronProblem(x, target, q, 0.3, 0.0, qmin=-7, qmax=7).solve()
    print(reduced, whole)
    assert set(np.flatnonzero(reduced.delta_weight)) <= set(cols.tolist())
    assert np.any(reduced.delta_weight != 0), "the reduced LP changed nothing"
    residual = 0.3 * x @ (q + reduced.delta_weight) + reduced.delta_bias - target
    expected = np.abs(residual).mean() + reduced.lam * np.abs(reduced.delta_weight).sum()
    assert reduced.objective_rounded == pytest.approx(expected, abs=EXACT)
    assert reduced.objective_unchanged == pytest.approx(whole.objective_unchanged, abs=EXACT)
    assert reduced.objective_rounded < reduced.objective_unchanged


def test_match_keeps_the_columns_that_explain_the_mismatch_and_can_move():
    from qnnrepair.repair.lp.match import Match

    a = np.eye(4)[:, [0, 1, 2, 3]] * np.array([1.0, 2.0, 3.0, 4.0])  # column j pulls z_j * (j+1)
    z = np.array([1.0, -1.0, 1.0, 0.1])
    frozen = (np.array([0, 0, -1, 0]), np.array([1, 1, 0, 0]))  # weight 3 cannot move
    assert Match.columns(a, z, None, None) is None
    assert Match.columns(a, z, None, 8) is None  # narrow enough: every column
    assert Match.columns(a, z, None, 2).tolist() == [1, 2]  # |A'z| = 1, 2, 3, 0.4
    assert Match.columns(a, z, frozen, 3).tolist() == [0, 1, 2]


def labels(n: int) -> SimpleNamespace:
    """Targets (candidate.Targets) of n repair images: class 0, F right, none failing."""
    return SimpleNamespace(label=np.zeros(n, np.int64), usable=np.ones(n, bool),
                           failing=np.zeros(n, bool))


def test_match_lps_of_a_grouped_layer_take_their_groups_inputs_and_their_own_residual():
    """The match LPs of a layer are built for all neurons of a group at once (matrix products);
    each equals the per-neuron definition: its group's columns, z = rhs(its residual), the
    bias from the mean of its residual."""
    from qnnrepair.repair.activations import LayerRecord
    from qnnrepair.repair.config import LPConfig
    from qnnrepair.repair.lp import LayerLP, get_formulation
    from qnnrepair.repair.summary import RowSummary

    rng = np.random.default_rng(0)
    n, fan_in, groups, out = 200, 3, 2, 4  # channels 0, 1 see columns 0-2; 2, 3 see 3-5
    record = LayerRecord(rng.normal(size=(n, fan_in * groups)),
                         float_out=rng.normal(size=(n, out)).astype(np.float32),
                         image=np.arange(n), fan_in=fan_in, groups=groups, out_channels=out)
    weight = rng.integers(-3, 4, size=(out, fan_in))
    scale, bias = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, -0.5, 0.0, 1.0])
    config = LPConfig()
    layer = LayerLP(name="l", is_output=False, weight=weight, scale=scale, bias=bias,
                    domain=None, targets=labels(n), record=lambda *_: record, n_rows=3,
                    options=config.options(7), config=config, seed=0)
    match = get_formulation("match", output=False)
    for c in (1, 0, 3, 2):  # a group first met at its second channel, then its first
        problem = match.build(layer, (c,))
        cols = slice(c // 2 * fan_in, (c // 2 + 1) * fan_in)
        summary = RowSummary.of(record.inputs[:, cols], 3)
        residual = record.float_out[:, c] - (scale[c] * (record.inputs[:, cols] @ weight[c])
                                             + bias[c])
        z = summary.rhs(residual)
        np.testing.assert_allclose(problem.target, scale[c] * (summary.rows @ weight[c])
                                   + bias[c] + z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(problem.bias_from[1], residual.mean(), rtol=1e-12)
        np.testing.assert_array_equal(problem.bias_from[0], summary.mean)


def test_match_lp_of_a_neuron_with_constant_inputs_changes_no_weight():
    """A layer whose inputs never vary on R (seen: channels dead after W4A8 on MobileNetV2)
    has no direction to match: the match LP keeps its weights and still takes the mean
    residual into the bias."""
    from qnnrepair.repair.activations import LayerRecord
    from qnnrepair.repair.config import LPConfig
    from qnnrepair.repair.lp import LayerLP, get_formulation

    n, fan_in = 64, 6
    inputs = np.full((n, fan_in), 0.5)
    record = LayerRecord(inputs, float_out=np.full((n, 2), 0.3), image=np.arange(n),
                         fan_in=fan_in, groups=1, out_channels=2)
    weight = np.array([[1, -2, 3, 0, 1, 1], [0, 0, 1, 1, 1, 1]])
    config = LPConfig()
    layer = LayerLP(name="l", is_output=False, weight=weight, scale=np.array([0.1, 0.1]),
                    bias=np.zeros(2), domain=None, targets=labels(n),
                    record=lambda *_: record, n_rows=16, options=config.options(7),
                    config=config, seed=0)
    result = get_formulation("match", output=False).build(layer, (0,)).solve()
    assert not np.any(result.delta_weight)
    # residual 0.3 - 0.1 * (0.5 * 4) = 0.1 per row, all of it into the bias
    assert float(result.delta_bias) == pytest.approx(0.1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_rows=st.integers(2, 40), n_cols=st.integers(1, 30))
def test_presolve_off_reaches_the_same_optimum(seed, n_rows, n_cols):
    """"match" relaxations skip HiGHS's presolve (faster on their dense rows): the optimum
    of a dense L1 regression over a box is the same with and without it."""
    from qnnrepair.repair.lp.highs import HighsSolver, SparseLP

    rng = np.random.default_rng(seed)
    a, z = rng.normal(size=(n_rows, n_cols)), rng.normal(size=n_rows)
    # min sum(r+ + r-) s.t. a d - r+ + r- = z, d in [-1, 1]^n, r+-, >= 0
    dense = np.hstack([a, -np.eye(n_rows), np.eye(n_rows)])
    rows, cols = np.nonzero(dense)
    lp = SparseLP.from_triplets(
        rows, cols, dense[rows, cols], n_rows,
        col_cost=np.r_[np.zeros(n_cols), np.ones(2 * n_rows)],
        col_lower=np.r_[-np.ones(n_cols), np.zeros(2 * n_rows)],
        col_upper=np.r_[np.ones(n_cols), np.full(2 * n_rows, np.inf)],
        row_lower=z, row_upper=z, integer=np.zeros(n_cols + 2 * n_rows, bool))
    with_presolve = HighsSolver(lp).run()
    without = HighsSolver(lp, presolve=False).run()
    assert with_presolve.status == without.status == "optimal"
    assert without.objective == pytest.approx(with_presolve.objective, rel=1e-7, abs=1e-9)
