"""Folders of images listed in `labels.csv`: a `file,label` header, one image per row.

    file,label,source
    images/0000.jpg,305,photo by ...

`file` is relative to the folder holding `labels.csv`; `label` is an integer class index;
other columns are ignored. Class names are read from an optional `classes.txt` in the same
folder or, failing that, in its parent (the shared ImageNet samples keep one `classes.txt`
beside several such folders). Each of its lines names one class, either as the bare name
(line k names class k) or as `index<TAB>...<TAB>name` (ImageNet's `0<TAB>n01440764<TAB>tench`).

Every problem is a one-line error naming the file and the line.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.data.image_folder import decode_images
from qnnrepair.data.resizing import ImageSize
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
CLASSES_FILE = "classes.txt"
_COLUMNS = ("file", "label")


def has_labels_csv(folder: Path) -> bool:
    """Whether `folder` is a labels.csv data folder."""
    return (folder / LABELS_FILE).is_file()


def load_labels_csv(folder: Path, size: ImageSize | None = None) -> Dataset:
    """The images listed in `folder/labels.csv`, in the order listed, with their labels."""
    files, labels = read_labels_csv(folder / LABELS_FILE)
    classes = read_class_names(folder)
    if classes is not None and labels.max() >= len(classes):
        line = 2 + int(np.argmax(labels >= len(classes)))
        raise QnnRepairError(
            f"{folder / LABELS_FILE} line {line}: label {int(labels.max())} is out of range for "
            f"the {len(classes)} classes in {classes_path(folder)}; fix the label or that file"
        )
    images = decode_images(files, size)
    logger.debug("read %d images listed in %s", len(files), folder / LABELS_FILE)
    return Dataset(images, labels, classes)


def read_labels_csv(path: Path) -> tuple[list[Path], np.ndarray]:
    """(image paths, int64 labels) of a labels.csv, every path checked to be a file."""
    folder = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports
    except (OSError, UnicodeDecodeError) as err:
        raise QnnRepairError(f"cannot read {path} ({type(err).__name__}: {err})") from err
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise QnnRepairError(
            f"{path} line 1: no {' or '.join(repr(c) for c in missing)} column (header is "
            f"{','.join(header) or 'empty'}); the first line must be file,label"
        )
    reader.fieldnames = header
    files: list[Path] = []
    labels: list[int] = []
    for row in reader:
        line = reader.line_num
        name, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
        if not name and not label:
            continue  # a blank line
        if not name:
            raise QnnRepairError(f"{path} line {line}: the file column is empty")
        try:
            value = int(label)
        except ValueError:
            raise QnnRepairError(
                f"{path} line {line}: label {label!r} of {name} is not an integer class index "
                "(0, 1, ...); put class names in classes.txt, not in labels.csv"
            ) from None
        if value < 0:
            raise QnnRepairError(f"{path} line {line}: label {value} of {name} is negative; "
                                 "labels are 0..K-1")
        image = folder / name
        if not image.is_file():
            raise QnnRepairError(f"{path} line {line}: image {name} not found in {folder}; "
                                 "file paths are relative to the folder holding labels.csv")
        files.append(image)
        labels.append(value)
    if not files:
        raise QnnRepairError(f"{path} lists no images; add one file,label row per image")
    return files, np.asarray(labels, dtype=np.int64)


def classes_path(folder: Path) -> Path | None:
    """The classes.txt that names `folder`'s classes: its own, else its parent's, else None."""
    for candidate in (folder / CLASSES_FILE, folder.parent / CLASSES_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_class_names(folder: Path) -> tuple[str, ...] | None:
    """Class names from `classes_path(folder)`, index = label; None without such a file."""
    path = classes_path(folder)
    if path is None:
        return None
    lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) == 1:
            names.append(line.strip())
            continue
        if fields[0].strip() != str(len(names)):
            raise QnnRepairError(
                f"{path} line {number}: starts with {fields[0].strip()!r}, expected class index "
                f"{len(names)}; write one class per line, in label order (index<TAB>name or "
                "just the name)"
            )
        names.append(fields[-1].strip())
    if not names or any(not n for n in names):
        raise QnnRepairError(f"{path} has an empty class name (line "
                             f"{names.index('') + 1 if '' in names else 1}); name every class")
    return tuple(names)
