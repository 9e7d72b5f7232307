"""Validation drawn from held-out data: disjoint from test, refused when it is not."""

import numpy as np
import pytest

from qnnrepair.data import Dataset, load_dataset
from qnnrepair.data.splits import make_splits
from qnnrepair.errors import QnnRepairError


def data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), np.arange(n) % 3)


def ids(ds: Dataset) -> set[bytes]:
    return {img.tobytes() for img in ds.images}


def test_validation_comes_from_the_held_out_file_disjoint_from_test():
    pool, held = data(100, 0), data(50, 1)
    splits = make_splits(pool, held, 20, 10, None, seed=0)
    assert splits.validation_source == "held-out"
    assert len(splits.validation) == 10 and len(splits.test) == 40
    assert ids(splits.validation) <= ids(held) and not ids(splits.validation) & ids(splits.test)
    assert ids(splits.validation) | ids(splits.test) == ids(held)
    assert "disjoint from test" in splits.describe()
    again = make_splits(pool, held, 20, 10, None, seed=0)
    assert np.array_equal(again.validation_indices, splits.validation_indices)
    assert np.array_equal(again.repair_indices, make_splits(pool, None, 20, 10, 5).repair_indices)


def test_validation_from_training_data_warns(caplog):
    splits = make_splits(data(100, 0), None, 20, 10, None, seed=0)
    assert splits.validation_source == "training"
    assert "validation is drawn from the training data" in caplog.text


def test_a_validation_file_that_overlaps_test_is_refused():
    pool, held = data(100, 0), data(50, 1)
    with pytest.raises(QnnRepairError, match="shares images with the test set") as err:
        make_splits(pool, held, 20, 10, None, seed=0, validation=held)
    assert "\n" not in str(err.value)
    with pytest.raises(QnnRepairError, match="shares images with the repair set"):
        make_splits(pool, held, 20, 10, None, seed=0, validation=pool)
    fine = make_splits(pool, held, 20, 10, None, seed=0, validation=data(30, 2))
    assert fine.validation_source == "validation-file" and len(fine.test) == 50


def test_too_small_or_empty_held_out_data_is_refused(tmp_path):
    with pytest.raises(QnnRepairError, match="too few for 10 validation"):
        make_splits(data(100, 0), data(10, 1), 20, 10, None, seed=0)
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 4, 4, 3), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(QnnRepairError, match="empty") as err:
        load_dataset(empty, split="test")
    assert "\n" not in str(err.value)


def test_small_held_out_data_is_split_in_halves_by_default():
    import numpy as np

    from qnnrepair.data import Dataset
    from qnnrepair.data.splits import make_splits

    rng = np.random.default_rng(0)
    pool = Dataset(rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 50))
    held = Dataset(rng.integers(0, 256, (301, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 301))
    splits = make_splits(pool, held, 20, None)
    assert (len(splits.validation), len(splits.test)) == (150, 151)
    big = Dataset(rng.integers(0, 256, (2500, 4, 4, 3), dtype=np.uint8),
                  rng.integers(0, 3, 2500))
    splits = make_splits(pool, big, 20, None)
    assert (len(splits.validation), len(splits.test)) == (1000, 1500)
    assert len(make_splits(pool, held, 20, 100).validation) == 100  # as given
