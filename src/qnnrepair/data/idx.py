"""MNIST-style idx files (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, ...).

The format (LeCun's MNIST page): two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions, one big-endian int32 per dimension, then the raw values.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

_PREFIX = {"train": "train", "test": "t10k"}
_UBYTE = 0x08


def find_idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) paths of `split` in `folder`, or None when the folder has none."""
    images = _find(folder, f"{_PREFIX[split]}-images", "idx3-ubyte")
    labels = _find(folder, f"{_PREFIX[split]}-labels", "idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = "images" if images is None else "labels"
        raise QnnRepairError(
            f"{folder} has idx {split} files but no {_PREFIX[split]}-{missing} file; "
            "put both the images and the labels file there"
        )
    return images, labels


def has_idx_files(folder: Path) -> bool:
    """Whether `folder` holds idx files of any split (it then is an idx data folder)."""
    return any(folder.glob("*-idx[13]-ubyte*"))


def _find(folder: Path, stem: str, kind: str) -> Path | None:
    # Both the official names (train-images-idx3-ubyte) and a common re-upload variant
    # (train-images.idx3-ubyte), gzipped or not.
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            path = folder / f"{stem}{sep}{kind}{suffix}"
            if path.is_file():
                return path
    return None


def load_idx(images_path: Path, labels_path: Path) -> Dataset:
    """Images (N, H, W) -> (N, H, W, 1) and their labels, read from a pair of idx files."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise QnnRepairError(
            f"{images_path} holds a {images.ndim}-D array, images need (N, H, W); "
            "is it a labels file?"
        )
    if labels.ndim != 1:
        raise QnnRepairError(f"{labels_path} holds a {labels.ndim}-D array, labels need (N,)")
    if len(images) != len(labels):
        raise QnnRepairError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels; use files from the same split"
        )
    logger.debug("read %d idx images of %s from %s", len(images), images.shape[1:], images_path)
    return Dataset(images[..., None], labels)


def read_idx(path: Path) -> np.ndarray:
    """The unsigned-byte array stored in idx file `path` (gzipped when it ends in .gz)."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise QnnRepairError(f"{path} is not an idx file (bad magic number); check the file")
    if data[2] != _UBYTE:
        raise QnnRepairError(
            f"{path} stores type code {data[2]:#04x}; "
            "only unsigned-byte idx files (0x08) are supported"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise QnnRepairError(f"{path} is truncated (header cut short); re-download it")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise QnnRepairError(
            f"{path} has {len(data) - header} data bytes, its header {shape} needs {expected}; "
            "the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise QnnRepairError(
            f"cannot read {path} ({type(err).__name__}: {err}); the file is corrupt or truncated"
        ) from err
