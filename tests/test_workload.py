"""pipeline.Workload: R and V as normalized tensors, T as pixels normalized on request."""

import numpy as np
import torch

from qnnrepair.data import Dataset, make_splits, to_tensor
from qnnrepair.models import ModelInfo
from qnnrepair.pipeline import Workload
from qnnrepair.testing import tiny_conv_net


def _workload():
    rng = np.random.default_rng(0)
    pool = Dataset(rng.integers(0, 256, (60, 8, 8, 3)).astype(np.uint8), rng.integers(0, 4, 60),
                   classes=("a", "b", "c", "d"))
    test = Dataset(rng.integers(0, 256, (40, 8, 8, 3)).astype(np.uint8), rng.integers(0, 4, 40),
                   classes=("a", "b", "c", "d"))
    info = ModelInfo("tiny", (3, 8, 8), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    splits = make_splits(pool, test, 30, 10, None, 0)
    return Workload("tiny", tiny_conv_net(), info, splits, 0), splits.test


def test_every_split_is_normalized_with_the_models_statistics():
    work, test = _workload()
    want = to_tensor(test.images, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert torch.equal(work.images("test"), want)
    assert torch.equal(work.labels("test"), torch.from_numpy(test.labels).long())
    assert work.images("repair").shape == (30, 3, 8, 8)
    assert work.images("validation").shape == (10, 3, 8, 8)
    assert work.class_names == ["a", "b", "c", "d"]
    assert "repair 30" in work.split_description


def test_repair_and_validation_tensors_are_kept_not_remade():
    work, _ = _workload()
    assert work.images("repair") is work.images("repair")
    assert work.images("validation") is work.images("validation")
    assert not any(isinstance(v, Dataset) for v in vars(work).values())  # no pixels of R or V
