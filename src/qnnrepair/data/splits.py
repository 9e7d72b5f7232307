"""Deterministic, disjoint repair / validation / test splits.

The repair set R drives localization and the LPs, the validation set V decides whether a
change is kept, and the test set T is only reported. Drawing them from one seeded permutation
makes every run reproducible; R is the permutation's prefix, so changing `n_validation`
never changes R.

V should be data the float model was not trained on: on its own training images a CIFAR
checkpoint is 99.8 % right, and a guard drawn from them sees almost nothing. So V comes from
the held-out file when there is one (drawn disjointly from T), or from a validation file of its
own; only without either is it drawn from the training pool, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

# The three splits, in the order every report lists them (the fields of Splits).
SPLIT_NAMES = ("repair", "validation", "test")


@dataclass(frozen=True, eq=False)
class Splits:
    """Repair, validation and test sets, with the pool indices they were drawn from.

    Indices are into the set each split was drawn from: the pool for R; the pool, the
    held-out file or the validation file for V (`validation_source` says which: "training",
    "held-out" or "validation-file"); the pool or the held-out file for T (None when T is the
    whole held-out file).
    """

    repair: Dataset
    validation: Dataset
    test: Dataset
    repair_indices: np.ndarray | None = None
    validation_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    validation_source: str = "training"

    def __repr__(self) -> str:
        return (
            f"Splits(repair={len(self.repair)}, validation={len(self.validation)} "
            f"({self.validation_source}), test={len(self.test)})"
        )

    def describe(self) -> str:
        """One line for reports: where each split came from."""
        where = {"training": "the training pool (the float model may have seen it)",
                 "held-out": "the held-out file, disjoint from test",
                 "validation-file": "the validation file"}[self.validation_source]
        return (f"repair {len(self.repair)} from the training pool, validation "
                f"{len(self.validation)} from {where}, test {len(self.test)}")


DEFAULT_VALIDATION = 1000


def default_validation(n_validation: int | None, test: Dataset | None,
                       validation: Dataset | None, n_test: int | None) -> int:
    """The validation size to draw: as given, else the default that fits the held-out data."""
    if n_validation is not None:
        return n_validation
    if test is None or validation is not None:
        return DEFAULT_VALIDATION
    available = len(test) - (n_test or 0)
    if n_test is None and len(test) < 2 * DEFAULT_VALIDATION:
        chosen = len(test) // 2
        logger.info("held-out data has %d images: validation %d, test %d", len(test), chosen,
                    len(test) - chosen)
        return chosen
    return min(DEFAULT_VALIDATION, max(available, 0))


def spread(n_images: int, n_chosen: int) -> np.ndarray:
    """Indices of `n_chosen` of `n_images` images spread evenly over them (ascending): a
    subset for work that needs fewer images than a split holds."""
    n_chosen = min(n_chosen, n_images)
    return np.unique(np.linspace(0, n_images - 1, n_chosen).round().astype(np.int64))


def make_splits(
    pool: Dataset,
    test: Dataset | None,
    n_repair: int,
    n_validation: int,
    n_test: int | None = None,
    seed: int = 0,
    validation: Dataset | None = None,
) -> Splits:
    """Draw R from `pool` with a permutation seeded by `seed` (PCG64), and V and T.

    `n_validation` None is the default: DEFAULT_VALIDATION images, or half the held-out data
    when V and T both come from `test` and it has fewer than twice that many (T is the rest).

    With `validation` given, V is `n_validation` images of it (seeded draw); with `test`
    given, V is drawn from `test` and T is the rest of it (its first `n_test` images when
    `n_test` is set); with neither, V is drawn from the pool after R (a warning says so), and T
    is `n_test` further pool images (all the rest when `n_test` is None). V is refused if it
    shares an image with R or T.
    """
    n_validation = default_validation(n_validation, test, validation, n_test)
    _check_counts(n_repair, n_validation, n_test)
    if validation is not None or test is not None:
        splits = _held_out_splits(pool, test, validation, n_repair, n_validation, n_test, seed)
        _check_disjoint(splits)
        return splits
    logger.warning("validation is drawn from the training data: the float model may have been "
                   "trained on it, and a guard on such images sees little; give --test-data "
                   "(validation is then drawn from it) or --validation-data")
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


def _held_out_splits(pool, test, validation, n_repair, n_validation, n_test, seed) -> Splits:
    """R from the pool; V from `validation`, else from `test`; T from `test`, else the pool."""
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pool))
    if n_repair + (0 if test is not None else 1) > len(pool):
        raise QnnRepairError(f"pool has {len(pool)} images, too few for {n_repair} repair "
                             f"images{'' if test is not None else ' and a test set'}; lower "
                             "--n-repair, use a larger pool or give --test-data")
    repair_idx = np.sort(order[:n_repair])
    if validation is None:
        _same_kind(test, pool, "test")
        wanted = n_validation + (1 if n_test is None else n_test)
        if wanted > len(test):
            raise QnnRepairError(
                f"the held-out data has {len(test)} images, too few for {n_validation} "
                f"validation + {'at least 1' if n_test is None else n_test} test images; "
                "lower --n-validation or --n-test")
        held = np.random.Generator(np.random.PCG64(seed)).permutation(len(test))
        val_idx, rest = np.sort(held[:n_validation]), np.sort(held[n_validation:])
        test_idx = rest if n_test is None else rest[:n_test]
        return Splits(pool.subset(repair_idx), test.subset(val_idx), test.subset(test_idx),
                      repair_idx, val_idx, test_idx, "held-out")
    _same_kind(validation, pool, "validation")
    if n_validation > len(validation):
        raise QnnRepairError(f"n_validation is {n_validation} but the validation data has "
                             f"only {len(validation)} images")
    val_idx = np.sort(np.random.Generator(np.random.PCG64(seed)).permutation(
        len(validation))[:n_validation])
    if test is not None:
        test_idx, test_set = None, _given_test(pool, test, n_test)
    else:
        test_idx = np.sort(order[n_repair:None if n_test is None else n_repair + n_test])
        test_set = pool.subset(test_idx)
    return Splits(pool.subset(repair_idx), validation.subset(val_idx), test_set, repair_idx,
                  val_idx, test_idx, "validation-file")


def _check_disjoint(splits: Splits) -> None:
    """V must share no image with R or T (compared by pixels and label)."""
    seen = {name: {_digest(img) for img in getattr(splits, name).images}
            for name in ("repair", "test")}
    for image in splits.validation.images:
        digest = _digest(image)
        for name, digests in seen.items():
            if digest in digests:
                raise QnnRepairError(
                    f"the validation data shares images with the {name} set: give "
                    f"validation data disjoint from the {name} data")


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def _same_kind(data: Dataset, pool: Dataset, what: str) -> None:
    if data.image_shape != pool.image_shape:
        raise QnnRepairError(
            f"{what} images are {'x'.join(map(str, data.image_shape))}, pool images are "
            f"{'x'.join(map(str, pool.image_shape))}; use {what} data of the same kind")


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
