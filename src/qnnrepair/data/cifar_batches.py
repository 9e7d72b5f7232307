"""CIFAR-10 'python version' batches (`data_batch_1..5`, `test_batch`, `batches.meta`).

The batches are pickles. A pickle can name any Python callable, so they are read with an
unpickler that resolves only the few globals a numpy array needs and refuses everything
else: a tampered or wrong file fails with an error instead of running code.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from pathlib import Path

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

_SIDE = 32
_CHANNELS = 3
_NUM_CLASSES = 10
_TRAIN_NAME = re.compile(r"data_batch_(\d+)")


def _safe_globals() -> dict[tuple[str, str], object]:
    """The callables a pickled ndarray refers to, under the module paths numpy 1 and 2 use."""
    reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes as _codecs.encode(text, 'latin1') in protocol 2 pickles.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def is_cifar_folder(folder: Path) -> bool:
    """Whether `folder` holds CIFAR-10 python batches."""
    return (folder / "test_batch").is_file() or any(folder.glob("data_batch_*"))


def load_cifar_batches(folder: Path, split: str) -> Dataset:
    """All batches of `split` in `folder` (train: data_batch_1.. in numeric order)."""
    paths = _batch_paths(folder, split)
    parts = [_read_batch(path) for path in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    logger.debug("read %d CIFAR images from %d batch files in %s", len(images), len(paths), folder)
    return Dataset(images, labels, _class_names(folder))


def _batch_paths(folder: Path, split: str) -> list[Path]:
    if split == "test":
        paths = [folder / "test_batch"] if (folder / "test_batch").is_file() else []
    else:
        numbered = {
            int(m.group(1)): p
            for p in folder.glob("data_batch_*")
            if (m := _TRAIN_NAME.fullmatch(p.name)) and p.is_file()
        }
        paths = [numbered[k] for k in sorted(numbered)]
    if not paths:
        wanted = "test_batch" if split == "test" else "data_batch_1 .. data_batch_5"
        raise QnnRepairError(
            f"{folder} has no CIFAR-10 {split} batches ({wanted}); check the folder"
        )
    return paths


def _unpickle(path: Path) -> object:
    try:
        data = path.read_bytes()
        # The official files were written by Python 2: their str fields are bytes.
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if "is not allowed" in str(err):
            raise QnnRepairError(
                f"{path} is not a plain CIFAR-10 batch: it asks to run code ({err}); "
                "use the original files from the CIFAR-10 site"
            ) from err
        raise _corrupt(path, err) from err
    except Exception as err:  # EOFError, ValueError, ... on damaged files
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: Exception) -> QnnRepairError:
    return QnnRepairError(
        f"cannot read CIFAR-10 batch {path} ({type(err).__name__}: {err}); "
        "the file is corrupt or truncated, re-download it"
    )


def _field(batch: dict, name: str, path: Path) -> object:
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise QnnRepairError(f"{path} has no {name!r} entry; it is not a CIFAR-10 batch")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise QnnRepairError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path))
    row = _SIDE * _SIDE * _CHANNELS
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise QnnRepairError(
            f"{path} data has shape {data.shape} and dtype {data.dtype}, "
            f"CIFAR-10 batches hold uint8 (N, {row}); check the file"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise QnnRepairError(f"{path} has {len(data)} images but {labels.size} labels")
    if not np.issubdtype(labels.dtype, np.integer) or (
        labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES)
    ):
        raise QnnRepairError(
            f"{path} has labels outside 0..{_NUM_CLASSES - 1}; it is not a CIFAR-10 batch"
        )
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values.
    images = data.reshape(-1, _CHANNELS, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _class_names(folder: Path) -> tuple[str, ...] | None:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return None
    batch = _unpickle(meta)
    names = batch.get(b"label_names", batch.get("label_names")) if isinstance(batch, dict) else None
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        logger.warning("%s has no list of %d label names; classes left unnamed", meta, _NUM_CLASSES)
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
