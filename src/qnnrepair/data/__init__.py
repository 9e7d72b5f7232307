"""Data sets as uint8 NHWC arrays: loaders for common formats, normalization, splits."""

from qnnrepair.data.dataset import Dataset
from qnnrepair.data.load import load_dataset
from qnnrepair.data.splits import SPLIT_NAMES, Splits, make_splits
from qnnrepair.data.transforms import check_compatible, to_tensor

__all__ = [
    "SPLIT_NAMES", "Dataset", "Splits", "check_compatible", "load_dataset", "make_splits",
    "to_tensor",
]
