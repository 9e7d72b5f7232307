"""The guard (repair/acceptance.py): what it keeps, judged on validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qnnrepair.repair.acceptance import Guard, Score, significant_drop
from qnnrepair.testing import blob_data, trained_tiny_net

scores = st.builds(Score, st.floats(0, 100), st.floats(0, 10))


@settings(max_examples=300, deadline=None)
@given(candidate=scores, best=scores, changed=st.booleans(),
       criterion=st.sampled_from(["kl", "accuracy"]), min_gain=st.floats(0, 0.5))
def test_the_guard_never_keeps_a_candidate_that_lowers_validation_accuracy(
        candidate, best, changed, criterion, min_gain):
    guard = Guard.__new__(Guard)  # the decision needs no model
    guard.criterion, guard.min_gain, guard.min_z = criterion, min_gain, 0.0
    kept = guard.accepts(candidate, best, changed)
    if kept:
        assert changed and candidate.accuracy >= best.accuracy
    if kept and criterion == "kl":
        assert candidate.divergence < best.divergence * (1 - min_gain)


@st.composite
def paired_scores(draw):
    """A candidate and the best so far on the same n images, with per-image KL."""
    n = draw(st.integers(1, 30))
    kl = st.lists(st.floats(0, 5), min_size=n, max_size=n).map(
        lambda v: torch.tensor(v, dtype=torch.float64))
    return tuple(Score(draw(st.floats(0, 100)), per.mean().item(), per)
                 for per in (draw(kl), draw(kl)))


@settings(max_examples=300, deadline=None)
@given(pair=paired_scores(), min_gain=st.floats(0, 0.5), min_z=st.floats(0, 3))
def test_with_the_paired_test_the_guard_still_never_lowers_validation_accuracy(
        pair, min_gain, min_z):
    candidate, best = pair
    guard = Guard.__new__(Guard)
    guard.criterion, guard.min_gain, guard.min_z = "kl", min_gain, min_z
    if guard.accepts(candidate, best, True):
        assert candidate.accuracy >= best.accuracy
        assert candidate.divergence < best.divergence * (1 - min_gain)
        assert significant_drop(best.per_image, candidate.per_image, min_z)


def test_a_tie_or_one_image_more_is_not_enough_with_kl():
    guard = Guard.__new__(Guard)
    guard.criterion, guard.min_gain, guard.min_z = "kl", 0.01, 0.0
    best = Score(90.0, 0.2000)
    assert not guard.accepts(Score(90.0, 0.2000), best, True)  # a tie
    assert not guard.accepts(Score(90.1, 0.1990), best, True)  # one image, KL -0.5 %
    assert guard.accepts(Score(90.0, 0.1900), best, True)  # KL -5 %, accuracy held
    assert not guard.accepts(Score(89.9, 0.1000), best, True)  # accuracy dropped


def test_the_paired_test_against_a_hand_computed_drop():
    # drops 1, 0, 0, 0: mean 0.25, standard deviation sqrt(0.25 * 0.75) = 0.433, standard
    # error 0.2165, so the drop is 1.155 standard errors
    best, candidate = torch.ones(4), torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert significant_drop(best, candidate, 1.0)
    assert not significant_drop(best, candidate, 1.2)
    assert significant_drop(best, candidate, 1.15)
    assert significant_drop(best, best - 0.1, 50.0)  # every image drops alike
    assert not significant_drop(best, best + 0.1, 0.0)


def test_with_min_z_a_drop_carried_by_one_image_is_not_enough():
    per_image = torch.full((100,), 0.2)
    one = per_image.clone()
    one[0] = 0.0  # the mean drops 1 %, all of it on one image
    many = per_image - 0.002  # the same mean drop, on every image
    best = Score(90.0, per_image.mean().item(), per_image)
    guard = Guard.__new__(Guard)
    guard.criterion, guard.min_gain, guard.min_z = "kl", 0.005, 0.0
    assert guard.accepts(Score(90.0, one.mean().item(), one), best, True)
    guard.min_z = 2.0
    assert not guard.accepts(Score(90.0, one.mean().item(), one), best, True)
    assert guard.accepts(Score(90.0, many.mean().item(), many), best, True)


def test_scores_are_accuracy_and_kl_to_the_float_model():
    model = trained_tiny_net(seed=0)
    images, labels = blob_data(120, seed=1)
    guard = Guard(model, images, labels)
    same = guard.score(model)
    other = trained_tiny_net(seed=1)
    with torch.no_grad():
        p = torch.log_softmax(model(images).double(), 1)
        q = torch.log_softmax(other(images).double(), 1)
        kl = (p.exp() * (p - q)).sum(1).mean().item()
        acc = 100.0 * (other(images).argmax(1) == labels).double().mean().item()
    print(same, guard.score(other), kl, acc)
    assert same.divergence == pytest.approx(0.0, abs=1e-12)
    assert guard.float_accuracy == same.accuracy
    assert guard.score(other).divergence == pytest.approx(kl, rel=1e-9)
    assert guard.score(other).per_image.mean().item() == pytest.approx(kl, rel=1e-9)
    assert guard.score(other).accuracy == pytest.approx(acc)
    with torch.no_grad():
        right = 100.0 * (model(images).argmax(1) == labels).double().mean().item()
    assert math.isclose(same.accuracy, right)
