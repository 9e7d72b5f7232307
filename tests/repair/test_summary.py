"""The LP row summary (repair/summary.py): exact for small fan-ins, randomized for large ones."""

import numpy as np

from qnnrepair.repair import summary
from qnnrepair.repair.summary import RowSummary


def _inputs(n=400, j=40, seed=0):
    rng = np.random.default_rng(seed)
    # decaying spectrum: the top directions are well separated
    return rng.normal(size=(n, j)) * (0.7 ** np.arange(j)) + rng.normal(size=j)


def test_full_summary_reproduces_the_least_squares_objective():
    x = _inputs()
    s = RowSummary.of(x, k=x.shape[1])
    r = np.random.default_rng(1).normal(size=len(x))
    u = np.random.default_rng(2).normal(size=x.shape[1])
    centred_r = r - r.mean()
    direct = np.mean((s.centred @ u - centred_r) ** 2)
    summarized = np.sum((s.rows @ u - s.rhs(r)) ** 2)
    # they differ by a constant independent of u: compare two choices of u
    u2 = u * 0.5
    direct2 = np.mean((s.centred @ u2 - centred_r) ** 2)
    summarized2 = np.sum((s.rows @ u2 - s.rhs(r)) ** 2)
    assert np.isclose(direct - direct2, summarized - summarized2, rtol=1e-8)


def test_the_rhs_of_several_residuals_at_once_is_each_ones_rhs():
    x = _inputs()
    s = RowSummary.of(x, k=8)
    residuals = np.random.default_rng(4).normal(size=(len(x), 3)) + [0.0, 5.0, -2.0]
    together = s.rhs(residuals)
    assert together.shape == (len(s.sqrt_eig), 3)
    for j in range(3):
        np.testing.assert_allclose(together[:, j], s.rhs(residuals[:, j]), rtol=1e-10,
                                   atol=1e-12)


def test_randomized_top_directions_match_the_full_eigendecomposition(monkeypatch):
    x = _inputs()
    exact = RowSummary.of(x, k=5)
    monkeypatch.setattr(summary, "FULL_EIGEN_MAX_FAN_IN", 10)
    fast = RowSummary.of(x, k=5, seed=3)
    np.testing.assert_allclose(fast.sqrt_eig, exact.sqrt_eig, rtol=1e-6)
    overlap = np.abs(np.sum(fast.directions * exact.directions, axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
    again = RowSummary.of(x, k=5, seed=3)
    np.testing.assert_array_equal(again.rows, fast.rows)


def test_an_offset_alone_gets_its_bias_fix_from_the_mean_residual():
    """A neuron whose pre-activation is off by a constant and whose weights cannot move: the
    centred rows see nothing to fix; the bias delta is the mean residual."""
    from qnnrepair.repair.lp.neuron import NeuronProblem

    x = _inputs(j=6)
    s = RowSummary.of(x, k=6)
    weight, scale, bias, offset = np.array([3, -2, 1, 0, 2, -1]), 0.1, 0.2, 0.5
    residual = np.full(len(x), offset)  # float minus quantized pre-activation, everywhere
    a, z = s.rows, s.rhs(residual)
    np.testing.assert_allclose(z, 0.0, atol=1e-12)
    frozen = (np.zeros(6), np.zeros(6))
    result = NeuronProblem(a, scale * (a @ weight) + bias + z, weight, scale, bias, qmin=-7,
                           qmax=7, mode="match", delta_bounds=frozen, fit_bias=False,
                           max_rows=len(a), bias_from=(s.mean, offset)).solve()
    assert not result.delta_weight.any()
    assert result.delta_bias == offset
    assert result.objective_rounded == result.objective_unchanged
