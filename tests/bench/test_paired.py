"""Paired differences of two methods' per-image correctness, against hand-computed values."""

import math

import pytest

from qnnrepair.bench.paired import correct_string, paired_difference


def test_paired_difference_by_hand():
    # d = (1, 0, 0, -1, 1): mean 0.2, sample variance (0.64 + 0.04*2 + 1.44 + 0.64) / 4 = 0.7
    a, b = "11001", "01010"
    diff, half = paired_difference(a, b)
    assert diff == pytest.approx(20.0)
    assert half == pytest.approx(1.96 * 100 * math.sqrt(0.7 / 5))


def test_identical_methods_differ_by_nothing_with_no_spread():
    assert paired_difference("1010", "1010") == (0.0, 0.0)


def test_correct_string_round_trips_and_mismatched_lengths_are_refused():
    assert correct_string([True, False, True]) == "101"
    with pytest.raises(ValueError, match="same non-empty images"):
        paired_difference("10", "1")
