"""qnnrepair.outcomes against a hand-made table of every (label, F, Q) case."""

import numpy as np
import pytest
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.outcomes import ORACLES, Outcomes, outcomes

# label, F(x), Q(x), then the expected outcome with oracle "label" and with oracle "float".
# P = passing, F = failing, S = skipped.
TABLE = [
    # label  float  quant  by label  by float
    (0,      0,     0,     "P",      "P"),  # everyone right
    (0,      0,     1,     "F",      "F"),  # quantization broke a right answer
    (0,      1,     1,     "S",      "P"),  # both wrong the same way: Q agrees with F
    (0,      1,     0,     "P",      "F"),  # Q right, F wrong: passing by label, not by F
    (0,      1,     2,     "S",      "F"),  # both wrong, differently
    (3,      3,     3,     "P",      "P"),
    (3,      3,     0,     "F",      "F"),
]


def _column(i):
    return torch.tensor([row[i] for row in TABLE])


@pytest.mark.parametrize("oracle", ORACLES)
def test_outcomes_match_the_hand_made_table(oracle):
    result = outcomes(_column(1), _column(2), _column(0), oracle)
    expected = [row[3 if oracle == "label" else 4] for row in TABLE]
    got = ["P" if p else "F" if f else "S"
           for p, f in zip(result.passing.tolist(), result.failing.tolist())]
    assert got == expected
    target = _column(0) if oracle == "label" else _column(1)
    assert torch.equal(result.target, target)
    assert result.usable.tolist() == [f == t for f, t in zip(_column(1).tolist(), target.tolist())]
    assert result.skipped.tolist() == [e == "S" for e in expected]
    assert (result.n_passed, result.n_failed, result.n_skipped) == tuple(
        expected.count(c) for c in "PFS")


@pytest.mark.parametrize("oracle", ORACLES)
def test_each_input_has_exactly_one_outcome(oracle):
    generator = torch.Generator().manual_seed(0)
    labels, float_pred, quant_pred = torch.randint(4, (3, 500), generator=generator)
    r = outcomes(float_pred, quant_pred, labels, oracle)
    total = r.passing.int() + r.failing.int() + r.skipped.int()
    assert torch.equal(total, torch.ones(500, dtype=torch.int32))
    assert torch.equal(r.failing, r.usable & ~r.passing)
    for t in (r.usable, r.passing, r.failing, r.skipped):
        assert t.dtype == torch.bool and t.shape == (500,)
    assert r.target.dtype == torch.int64


def test_float_oracle_skips_nothing():
    r = outcomes(_column(1), _column(2), _column(0), "float")
    assert r.n_skipped == 0 and bool(r.usable.all())


def test_numpy_arrays_are_accepted():
    r = outcomes(np.array([0, 1]), np.array([1, 1]), np.array([0, 0]))
    assert isinstance(r, Outcomes) and r.failing.tolist() == [True, False]
    assert "n_failed=1" in repr(r)


def test_unknown_oracle_is_refused():
    with pytest.raises(QnnRepairError, match="unknown oracle 'teacher'; use one of label, float"):
        outcomes(_column(1), _column(2), _column(0), "teacher")


def test_mismatched_lengths_are_refused():
    with pytest.raises(QnnRepairError, match="same length"):
        outcomes(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0, 1]))


def test_localization_exports_the_same_oracles():
    from qnnrepair.localization import ORACLES as localization_oracles

    assert localization_oracles is ORACLES
