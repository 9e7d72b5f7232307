"""Deterministic, disjoint repair / validation / test splits.

The repair set R drives localization and the LPs, the validation set V decides whether a
change is kept, and the test set T is only reported. Drawing them from one seeded permutation
makes every run reproducible; R is the permutation's prefix, so changing `n_validation`
never changes R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.errors import QnnRepairError

# The three splits, in the order every report lists them (the fields of Splits).
SPLIT_NAMES = ("repair", "validation", "test")


@dataclass(frozen=True, eq=False)
class Splits:
    """Repair, validation and test sets, with the pool indices they were drawn from.

    `test_indices` is None when the test set was given separately (rather than drawn from
    the pool); it then holds the first `n_test` images of that set.
    """

    repair: Dataset
    validation: Dataset
    test: Dataset
    repair_indices: np.ndarray | None = None
    validation_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"Splits(repair={len(self.repair)}, validation={len(self.validation)}, "
            f"test={len(self.test)})"
        )


def make_splits(
    pool: Dataset,
    test: Dataset | None,
    n_repair: int,
    n_validation: int,
    n_test: int | None = None,
    seed: int = 0,
) -> Splits:
    """Draw R and V disjointly from `pool` with a permutation seeded by `seed` (PCG64).

    T is `test` as given (its first `n_test` images when `n_test` is set), or, when `test`
    is None, `n_test` further pool images (all the rest when `n_test` is None).
    """
    _check_counts(n_repair, n_validation, n_test)
    # Drawing T from the pool without a count takes the rest, which must not be empty.
    n_pool_test = 0 if test is not None else (1 if n_test is None else n_test)
    if n_repair + n_validation + n_pool_test > len(pool):
        raise QnnRepairError(
            f"pool has {len(pool)} images, too few for {n_repair} repair + {n_validation} "
            f"validation{_test_wish(test, n_test)} images; lower the counts or use a larger pool"
        )
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pool))
    repair_idx = np.sort(order[:n_repair])
    validation_idx = np.sort(order[n_repair : n_repair + n_validation])
    if test is None:
        stop = None if n_test is None else n_repair + n_validation + n_test
        test_idx: np.ndarray | None = np.sort(order[n_repair + n_validation : stop])
        test_set = pool.subset(test_idx)
    else:
        test_idx = None
        test_set = _given_test(pool, test, n_test)
    return Splits(
        pool.subset(repair_idx),
        pool.subset(validation_idx),
        test_set,
        repair_idx,
        validation_idx,
        test_idx,
    )


def _check_counts(n_repair: int, n_validation: int, n_test: int | None) -> None:
    for name, value in (("n_repair", n_repair), ("n_validation", n_validation), ("n_test", n_test)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
            raise QnnRepairError(f"{name} must be a non-negative integer, got {value!r}")


def _test_wish(test: Dataset | None, n_test: int | None) -> str:
    if test is not None:
        return ""
    return f" + {n_test} test" if n_test is not None else " + at least 1 test"


def _given_test(pool: Dataset, test: Dataset, n_test: int | None) -> Dataset:
    if test.image_shape != pool.image_shape:
        raise QnnRepairError(
            f"test images are {'x'.join(map(str, test.image_shape))}, pool images are "
            f"{'x'.join(map(str, pool.image_shape))}; use test data of the same kind"
        )
    if n_test is None:
        return test
    if n_test > len(test):
        raise QnnRepairError(f"n_test is {n_test} but the test set has only {len(test)} images")
    return test.subset(np.arange(n_test))
