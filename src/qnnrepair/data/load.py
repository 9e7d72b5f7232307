"""`load_dataset`: one entry point that tells the format from what the path is.

- a `.npz` file with `x` (uint8 N,H,W,C or N,H,W) and `y` (or Keras-style `x_train`/`y_train`,
  `x_test`/`y_test`, picked by `split`);
- a folder of MNIST-style idx files (`train-*` or `t10k-*` by `split`);
- a folder of CIFAR-10 python batches (or one holding `cifar-10-batches-py/`);
- an image folder, one subfolder per class (or one with `train/` and `test/` such folders);
- a folder with `labels.csv` (`file,label` rows, files relative to it; see `labels_csv`),
  or one with `train/` and `test/` such folders.

docs/DATA.md describes each format.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np

from qnnrepair.data.cifar_batches import is_cifar_folder, load_cifar_batches
from qnnrepair.data.dataset import Dataset
from qnnrepair.data.idx import find_idx_files, has_idx_files, load_idx
from qnnrepair.data.image_folder import class_folders, load_image_folder
from qnnrepair.data.labels_csv import has_labels_csv, load_labels_csv
from qnnrepair.data.resizing import ImageSize
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
_CIFAR_SUBFOLDER = "cifar-10-batches-py"
_MAX_PIXEL = 255
# Where a user reads what each format looks like (docs/DATA.md in the source tree).
FORMATS_HINT = "the formats are described in docs/DATA.md and `qnnrepair repair --help`"


def load_dataset(path: str | Path, split: str = "train", size: ImageSize | None = None
                 ) -> Dataset:
    """The `split` ("train" or "test") of the data set at `path`, in any supported format,
    its images resized and cropped by `size` when given (image files as they are decoded,
    arrays after loading).

    A single `.npz` with plain `x`/`y` holds one split and is returned whatever `split` says.
    """
    if split not in SPLITS:
        raise QnnRepairError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    if not path.exists():
        raise QnnRepairError(f"data path {path} does not exist; check the path")
    if path.is_file():
        dataset, sized = _load_file(path, split), False
    else:
        dataset, sized = _load_folder(path, split, size)
    if len(dataset) == 0:
        raise QnnRepairError(f"data set {path} ({split}) is empty; give a data set with images")
    if size and not sized:  # arrays (npz, idx, CIFAR batches): resized after loading
        dataset = Dataset(size.apply_array(dataset.images), dataset.labels, dataset.classes)
    logger.info("loaded %r from %s (%s)", dataset, path, split)
    return dataset


def _load_file(path: Path, split: str) -> Dataset:
    if path.suffix.lower() == ".npz":
        return load_npz(path, split)
    raise QnnRepairError(
        f"unknown data format: {path} is a file but not an .npz; give an .npz file or a folder "
        f"of idx files, CIFAR-10 batches, labels.csv or one subfolder of images per class; "
        f"{FORMATS_HINT}"
    )


def _load_folder(path: Path, split: str, size: ImageSize | None = None
                 ) -> tuple[Dataset, bool]:
    """The data set in folder `path`, and whether `size` was applied as images were decoded."""
    if has_idx_files(path):
        found = find_idx_files(path, split)
        if found is None:
            raise QnnRepairError(f"{path} has idx files but none for the {split} split")
        return load_idx(*found), False
    if (path / _CIFAR_SUBFOLDER).is_dir():
        path = path / _CIFAR_SUBFOLDER
    if is_cifar_folder(path):
        return load_cifar_batches(path, split), False
    if has_labels_csv(path):  # before class folders: its images often sit in a subfolder
        return load_labels_csv(path, size), True
    if (path / split).is_dir() and {p.name for p in class_folders(path)} <= set(SPLITS):
        path = path / split
    if has_labels_csv(path):
        return load_labels_csv(path, size), True
    if class_folders(path):
        return load_image_folder(path, size), True
    raise QnnRepairError(
        f"unknown data format in folder {path}: no idx files, CIFAR-10 batches, labels.csv or "
        f"class subfolders; {FORMATS_HINT}"
    )


def load_npz(path: Path, split: str = "train") -> Dataset:
    """`x` and `y` (or `x_<split>` and `y_<split>`) of an .npz file, read without pickle."""
    try:
        # Our own handle: np.load leaks the one it opens when the zip directory is damaged.
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            x_key, y_key = _npz_keys(path, list(archive.keys()), split)
            x, y = archive[x_key], archive[y_key]
    except QnnRepairError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise QnnRepairError(
            f"cannot read {path} ({type(err).__name__}: {err}); the file is corrupt, truncated "
            "or holds pickled objects; save it with np.savez(path, x=images, y=labels)"
        ) from err
    return Dataset(_npz_images(path, x_key, x), _npz_labels(path, y_key, y, len(x)))


def _npz_keys(path: Path, keys: list[str], split: str) -> tuple[str, str]:
    for x_key, y_key in (("x", "y"), (f"x_{split}", f"y_{split}")):
        if x_key in keys and y_key in keys:
            return x_key, y_key
    raise QnnRepairError(
        f"{path} has arrays {sorted(keys)}, expected 'x' and 'y' (or 'x_{split}' and "
        f"'y_{split}'); save it with np.savez(path, x=images, y=labels)"
    )


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]  # grayscale (N, H, W)
    if x.ndim != 4:
        raise QnnRepairError(
            f"{path}: `{key}` has shape {x.shape}, expected images (N, H, W, C) or (N, H, W)"
        )
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        raise QnnRepairError(
            f"{path}: `{key}` has shape {x.shape}, which looks channels-first (N, C, H, W); "
            "store channels last: x.transpose(0, 2, 3, 1)"
        )
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and (
        x.size == 0 or (x.min() >= 0 and x.max() <= _MAX_PIXEL)
    ):
        return x.astype(np.uint8)
    raise QnnRepairError(
        f"{path}: `{key}` has dtype {x.dtype}; store uint8 pixels 0..255 "
        "(for floats in [0, 1]: (x * 255).round().astype(np.uint8))"
    )


def _npz_labels(path: Path, key: str, y: np.ndarray, n_images: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras stores CIFAR labels as (N, 1)
    if y.ndim != 1:
        raise QnnRepairError(
            f"{path}: `{key}` has shape {y.shape}, expected one integer label per image (N,); "
            "for one-hot labels store y.argmax(1)"
        )
    if len(y) != n_images:
        raise QnnRepairError(f"{path} has {n_images} images but {len(y)} labels in `{key}`")
    if not np.issubdtype(y.dtype, np.integer):
        raise QnnRepairError(f"{path}: `{key}` has dtype {y.dtype}; store integer class labels")
    if len(y) and y.min() < 0:
        raise QnnRepairError(
            f"{path}: `{key}` has negative labels (min {int(y.min())}); labels are 0..K-1"
        )
    return y
