"""What every format's writer does around its own file surgery: refuse to overwrite the
original, check that new integers fit the stored ones, and write the copy whole or not at all
(qnnrepair.fileio.atomic_path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import atomic_path, check_output_folder


def check_output(original_path: str | os.PathLike, out_path: str | os.PathLike
                 ) -> tuple[Path, Path]:
    """Both paths, once `out_path` is known not to be the original (which is only read) and
    its folder to be writable: before any work."""
    original_path, out_path = Path(original_path), Path(out_path)
    if out_path.exists() and out_path.resolve() == original_path.resolve():
        raise QnnRepairError(f"refusing to overwrite the original {original_path}: "
                             "give another output path")
    check_output_folder(out_path)
    return original_path, out_path


def fit_stored(values: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, layer: str,
               target: str) -> np.ndarray:
    """`values` (a layer's new integers in the file's layout) as the stored type `dtype` of
    `target` (e.g. "tensor 'w'"), after checking they have its shape and fit its range."""
    if tuple(values.shape) != tuple(shape):
        raise QnnRepairError(f"{layer}: shape {tuple(values.shape)} does not match {target} "
                             f"{tuple(shape)} in the file: was the model read from this file?")
    info = np.iinfo(dtype)
    lo, hi = int(values.min()), int(values.max())
    if lo < info.min or hi > info.max:
        raise QnnRepairError(f"{layer}: integers in [{lo}, {hi}] do not fit {target} of type "
                             f"{np.dtype(dtype).name}: clamp them to the grid")
    return values.astype(dtype)


def write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file renamed into place."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
