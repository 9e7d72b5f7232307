"""Suspiciousness metrics against hand-computed tables, and the ranking."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization import (
    METRICS,
    SpectrumCounts,
    compute_scores,
    get_metric,
    rank_neurons,
    safe_divide,
    score_layers,
)
from qnnrepair.neurons import Neuron

TOLERANCE = 1e-9  # the formulas are a few float64 operations on small integers

# Five neurons of one layer: F = 4 failing and P = 6 passing inputs each.
#            n0  n1  n2  n3  n4
EF = [3, 0, 4, 2, 1]
EP = [1, 2, 0, 6, 3]
NF = [1, 4, 0, 2, 3]
NP = [5, 4, 6, 0, 3]
TABLE = SpectrumCounts(np.array(EF), np.array(EP), np.array(NF), np.array(NP))

# Expected scores, worked out by hand (F = 4, P = 6):
EXPECTED = {
    # (ef/F) / (ef/F + ep/P)
    "tarantula": [
        9 / 11,  # n0: 0.75 / (0.75 + 1/6) = 0.75 / (11/12) = 9/11 = 0.8181...
        0.0,  # n1: 0 / (0 + 1/3)
        1.0,  # n2: 1 / (1 + 0)
        1 / 3,  # n3: 0.5 / (0.5 + 1)
        1 / 3,  # n4: 0.25 / (0.25 + 0.5)
    ],
    # ef / sqrt(F * (ef + ep))
    "ochiai": [
        0.75,  # n0: 3 / sqrt(4 * 4) = 3/4
        0.0,  # n1: 0 / sqrt(8)
        1.0,  # n2: 4 / sqrt(4 * 4)
        0.3535533905932738,  # n3: 2 / sqrt(4 * 8) = 1 / (2 sqrt 2)
        0.25,  # n4: 1 / sqrt(4 * 4)
    ],
    # ef^2 / (ep + nf)
    "dstar": [
        4.5,  # n0: 9 / 2
        0.0,  # n1: 0 / 6
        0.0,  # n2: 16 / 0 -> zero denominator -> 0
        0.5,  # n3: 4 / 8
        1 / 6,  # n4: 1 / 6
    ],
    # ef / (ef + ep + nf)
    "jaccard": [
        0.6,  # n0: 3 / 5
        0.0,  # n1: 0 / 6
        1.0,  # n2: 4 / 4
        0.2,  # n3: 2 / 10
        1 / 7,  # n4: 1 / 7
    ],
    # |ef/F - ep/P|
    "ample": [
        7 / 12,  # n0: |3/4 - 1/6| = 9/12 - 2/12
        1 / 3,  # n1: |0 - 2/6|
        1.0,  # n2: |1 - 0|
        0.5,  # n3: |1/2 - 1|
        0.25,  # n4: |1/4 - 1/2|
    ],
    # sqrt(ef + np)
    "euclid": [
        2.8284271247461903,  # n0: sqrt(8)
        2.0,  # n1: sqrt(4)
        3.1622776601683795,  # n2: sqrt(10)
        1.4142135623730951,  # n3: sqrt(2)
        2.0,  # n4: sqrt(4)
    ],
    # ef - h(ep)
    "wong3": [
        2.0,  # n0: ep = 1 <= 2 -> h = 1; 3 - 1
        -2.0,  # n1: ep = 2 -> h = 2; 0 - 2
        4.0,  # n2: ep = 0 -> h = 0
        -0.4,  # n3: ep = 6 -> h = 2 + 0.1 * 4 = 2.4; 2 - 2.4
        -1.1,  # n4: ep = 3 -> h = 2 + 0.1 * 1 = 2.1; 1 - 2.1
    ],
}


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_metric_matches_hand_computed_table(metric):
    got = compute_scores(metric, TABLE)
    error = np.abs(got - np.array(EXPECTED[metric])).max()
    assert error <= TOLERANCE, f"{metric}: got {got}, max error {error}"


def test_every_registered_metric_is_checked_by_a_table():
    assert set(METRICS) == set(EXPECTED) | {"random"}


def test_dstar_star_parameter():
    got = compute_scores("dstar", TABLE, star=3)
    # ef^3 / (ep + nf): 27/2, 0/6, 64/0 -> 0, 8/8, 1/6
    expected = [13.5, 0.0, 0.0, 1.0, 1 / 6]
    assert np.abs(got - expected).max() <= TOLERANCE, got
    got = compute_scores("dstar", TABLE, star=1.5)
    # ef^1.5 / (ep + nf): 3^1.5/2 = 2.598076..., 0, 0, 2^1.5/8 = 0.353553..., 1/6
    expected = [2.598076211353316, 0.0, 0.0, 0.3535533905932738, 1 / 6]
    assert np.abs(got - expected).max() <= TOLERANCE, got


@pytest.mark.parametrize("star", [0, -1, float("inf"), float("nan"), "2", True])
def test_dstar_rejects_bad_star(star):
    with pytest.raises(QnnRepairError, match="star"):
        compute_scores("dstar", TABLE, star=star)


def test_wong3_piecewise_h():
    ep = np.array([0, 1, 2, 3, 10, 11, 20, 1010])
    zeros = np.zeros_like(ep)
    got = compute_scores("wong3", SpectrumCounts(zeros, ep, zeros, zeros))
    # ef = 0, so the score is -h: h = ep up to 2; 2 + 0.1 (ep - 2) up to 10 (3 -> 2.1, 10 -> 2.8);
    # 2.8 + 0.001 (ep - 10) beyond (11 -> 2.801, 20 -> 2.81, 1010 -> 3.8)
    expected = -np.array([0, 1, 2, 2.1, 2.8, 2.801, 2.81, 3.8])
    assert np.abs(got - expected).max() <= TOLERANCE, got


# Zero denominators: every term with denominator 0 contributes 0.
ALL_ZERO = SpectrumCounts.zeros(2)
# No failing inputs (F = 0): ef = nf = 0, ep = 2, np = 3.
NO_FAILING = SpectrumCounts(np.array([0]), np.array([2]), np.array([0]), np.array([3]))
# No passing inputs (P = 0): ef = 2, nf = 1.
NO_PASSING = SpectrumCounts(np.array([2]), np.array([0]), np.array([1]), np.array([0]))
ZERO_DENOMINATOR_CASES = {
    "tarantula": (0.0, 0.0, 1.0),  # no-passing: (2/3) / (2/3 + 0)
    "ochiai": (0.0, 0.0, 0.816496580927726),  # no-passing: 2 / sqrt(3 * 2)
    "dstar": (0.0, 0.0, 4.0),  # no-failing: 0 / 2; no-passing: 4 / 1
    "jaccard": (0.0, 0.0, 2 / 3),  # no-passing: 2 / 3
    "ample": (0.0, 0.4, 2 / 3),  # no-failing: |0 - 2/5|; no-passing: |2/3 - 0|
    "euclid": (0.0, 1.7320508075688772, 1.4142135623730951),  # sqrt(3), sqrt(2)
    "wong3": (0.0, -2.0, 2.0),  # no-failing: 0 - 2; no-passing: 2 - 0
}


@pytest.mark.parametrize("metric", sorted(ZERO_DENOMINATOR_CASES))
def test_zero_denominators_give_zero_terms(metric):
    all_zero, no_failing, no_passing = ZERO_DENOMINATOR_CASES[metric]
    for counts, expected in (
        (ALL_ZERO, all_zero),
        (NO_FAILING, no_failing),
        (NO_PASSING, no_passing),
    ):
        got = compute_scores(metric, counts)
        assert np.isfinite(got).all(), got
        assert np.abs(got - expected).max() <= TOLERANCE, f"{metric} on {counts}: got {got}"


def test_safe_divide():
    got = safe_divide([1, 0, 3, -2], [2, 0, 0, 4])
    assert got.tolist() == [0.5, 0.0, 0.0, -0.5]
    assert got.dtype == np.float64


def test_random_is_seeded():
    counts = SpectrumCounts.zeros(50)
    first = compute_scores("random", counts, seed=7)
    again = compute_scores("random", counts, seed=7)
    other = compute_scores("random", counts, seed=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert ((first >= 0) & (first < 1)).all()
    ranking = rank_neurons({"a": first}, ["a"])
    assert ranking == rank_neurons({"a": again}, ["a"])
    assert ranking != rank_neurons({"a": other}, ["a"])


def test_random_seed_covers_all_layers_at_once():
    counts = {"a": SpectrumCounts.zeros(20), "b": SpectrumCounts.zeros(20)}
    scores = score_layers(counts, "random", seed=3)
    # One draw over all 40 neurons: the layers do not repeat each other's scores.
    assert not np.array_equal(scores["a"], scores["b"])
    assert np.array_equal(scores["a"], score_layers(counts, "random", seed=3)["a"])


def test_ranking_descending_with_ties_by_layer_order_then_index():
    scores = {"a": np.array([1.0, 0.2]), "b": np.array([1.0, 0.5, 1.0, 0.2])}
    ranking = rank_neurons(scores, ["b", "a"])
    assert ranking == [
        Neuron("b", 0),
        Neuron("b", 2),
        Neuron("a", 0),  # ties at 1.0: layer b comes first in layer_order, then by index
        Neuron("b", 1),
        Neuron("b", 3),  # ties at 0.2: b before a
        Neuron("a", 1),
    ]
    assert rank_neurons(scores, ["a", "b"])[:3] == [Neuron("a", 0), Neuron("b", 0), Neuron("b", 2)]


def test_ranking_errors():
    with pytest.raises(QnnRepairError, match="not in layer_order"):
        rank_neurons({"a": np.zeros(2)}, ["b"])
    with pytest.raises(QnnRepairError, match="twice"):
        rank_neurons({"a": np.zeros(2)}, ["a", "a"])
    with pytest.raises(QnnRepairError, match="finite"):
        rank_neurons({"a": np.array([0.0, np.nan])}, ["a"])
    assert rank_neurons({}, ["a"]) == []


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(QnnRepairError) as info:
        get_metric("tarantulla")
    message = str(info.value)
    assert "\n" not in message
    assert "tarantula" in message and "ochiai" in message


def test_unknown_metric_parameter():
    with pytest.raises(QnnRepairError, match="no parameter 'star'"):
        compute_scores("ochiai", TABLE, star=2)


def test_counts_validation():
    with pytest.raises(QnnRepairError, match="differ in length"):
        SpectrumCounts(np.zeros(2, int), np.zeros(3, int), np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(QnnRepairError, match="negative"):
        SpectrumCounts(np.array([-1]), np.zeros(1, int), np.zeros(1, int), np.zeros(1, int))
    with pytest.raises(QnnRepairError, match="integer"):
        SpectrumCounts(np.array([0.5]), np.zeros(1, int), np.zeros(1, int), np.zeros(1, int))
    assert TABLE.n_failed.tolist() == [4] * 5
    assert TABLE.n_passed.tolist() == [6] * 5
    assert TABLE.failed_deviating.dtype == np.int64
    assert not TABLE.failed_deviating.flags.writeable
    assert repr(TABLE) == "SpectrumCounts(n_neurons=5, n_failed=4, n_passed=6)"


def _counts_strategy():
    count = st.integers(min_value=0, max_value=10**6)
    return st.integers(min_value=0, max_value=12).flatmap(
        lambda n: st.tuples(*(st.lists(count, min_size=n, max_size=n) for _ in range(4)))
    )


@settings(max_examples=150, deadline=None)
@given(columns=_counts_strategy(), split=st.integers(min_value=0, max_value=12))
def test_scores_finite_and_ranking_deterministic(columns, split):
    counts = SpectrumCounts(*(np.array(c, dtype=np.int64) for c in columns))
    cut = min(split, counts.n_neurons)
    for metric in sorted(METRICS):
        scores = compute_scores(metric, counts)
        assert scores.shape == (counts.n_neurons,)
        assert np.isfinite(scores).all(), f"{metric}: {scores}"
        by_layer = {"second": scores[cut:], "first": scores[:cut]}
        ranking = rank_neurons(by_layer, ["first", "second"])
        assert ranking == rank_neurons(dict(reversed(by_layer.items())), ["first", "second"])
        assert sorted(ranking) == sorted(
            [Neuron("first", i) for i in range(cut)]
            + [Neuron("second", i) for i in range(counts.n_neurons - cut)]
        )
        # Sorted by descending score, ties by layer order then index.
        keys = [(-by_layer[n.layer][n.index], n.layer != "first", n.index) for n in ranking]
        assert keys == sorted(keys)
