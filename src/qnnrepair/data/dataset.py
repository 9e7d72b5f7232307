"""`Dataset`: images as uint8 NHWC pixels plus int64 labels, checked when built.

Pixels stay uint8 until `to_tensor`, so a data set costs one byte per pixel and every model
can apply its own normalization. Bad arrays fail here, with a one-line reason, instead of
as a shape error deep inside a forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qnnrepair.errors import QnnRepairError


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled images. `classes` optionally names the labels (index = label)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_images(self.images)
        object.__setattr__(self, "labels", _as_labels(self.labels))
        if len(self.images) != len(self.labels):
            raise QnnRepairError(
                f"data set has {len(self.images)} images but {len(self.labels)} labels; "
                "give one label per image"
            )
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
            if len(self.labels) and self.labels.max() >= len(self.classes):
                raise QnnRepairError(
                    f"label {int(self.labels.max())} is out of range for "
                    f"{len(self.classes)} classes; labels must be 0..{len(self.classes) - 1}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes: the named classes, or else the largest label + 1."""
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The images at `indices` (in that order), as a new data set with its own arrays."""
        index = np.asarray(indices)
        if index.size == 0:
            index = index.astype(np.int64)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise QnnRepairError(
                f"subset indices must be a 1-D list of integers, got dtype {index.dtype} "
                f"and shape {index.shape}"
            )
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise QnnRepairError(
                f"subset index out of range for a data set of {len(self)} images "
                f"(got {int(index.min())}..{int(index.max())})"
            )
        return Dataset(self.images[index], self.labels[index], self.classes)

    def __repr__(self) -> str:
        h, w, c = self.image_shape
        return (
            f"Dataset(n_samples={len(self)}, image_shape={h}x{w}x{c}, "
            f"num_classes={self.num_classes})"
        )


def _check_images(images: object) -> None:
    if not isinstance(images, np.ndarray):
        raise QnnRepairError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise QnnRepairError(
            f"images must have shape (N, H, W, C), got {images.shape}; "
            "add a channel axis for grayscale (images[..., None])"
        )
    if images.dtype != np.uint8:
        raise QnnRepairError(
            f"images must be uint8 pixels 0..255, got dtype {images.dtype}; "
            "convert with (images * 255).round().astype(np.uint8) if they are floats in [0, 1]"
        )
    if min(images.shape[1:]) < 1:
        raise QnnRepairError(
            f"images must have positive height, width and channels, got {images.shape}"
        )


def _as_labels(labels: object) -> np.ndarray:
    """Labels as a 1-D int64 array; any integer dtype is accepted (the values are kept)."""
    array = np.asarray(labels)
    if array.size == 0:
        array = array.reshape(0).astype(np.int64)
    if array.ndim != 1:
        raise QnnRepairError(f"labels must be a 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise QnnRepairError(
            f"labels must be integers, got dtype {array.dtype}; "
            "convert with labels.astype(np.int64)"
        )
    array = array.astype(np.int64, copy=False)
    if len(array) and array.min() < 0:
        raise QnnRepairError(f"labels must not be negative, found {int(array.min())}")
    return array
