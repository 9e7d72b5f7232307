"""Image folders: one subfolder per class, class names sorted to give labels 0, 1, ...

The layout torchvision's `ImageFolder` reads. Images are decoded with Pillow; when every
image is grayscale the data set is (N, H, W, 1), otherwise all are converted to RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from qnnrepair.data.dataset import Dataset
from qnnrepair.data.resizing import ImageSize
from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def class_folders(folder: Path) -> list[Path]:
    """Visible subfolders of `folder`, sorted by name (their order gives the labels)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so loading order is reproducible."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def load_image_folder(folder: Path, size: ImageSize | None = None) -> Dataset:
    """All images under `folder`'s class subfolders, labelled by sorted class name."""
    classes = class_folders(folder)
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(classes):
        found = image_files(class_dir)
        if not found:
            logger.warning("class folder %s has no images", class_dir)
        files += found
        labels += [label] * len(found)
    if not files:
        raise QnnRepairError(
            f"image folder {folder} has no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
            "files inside one subfolder per class, or a labels.csv; see docs/DATA.md)"
        )
    images = decode_images(files, size)
    logger.debug("read %d images of %d classes from %s", len(files), len(classes), folder)
    return Dataset(images, np.asarray(labels, dtype=np.int64), tuple(c.name for c in classes))


def decode_images(files: list[Path], size: ImageSize | None = None) -> np.ndarray:
    """Stack of all images: (N, H, W, 1) when every one is grayscale, else (N, H, W, 3), each
    resized and cropped by `size` first."""
    image_module = _pillow()
    arrays = [_decode(image_module, path, size) for path in files]
    first = arrays[0]
    for path, array in zip(files, arrays, strict=True):
        if array.shape[:2] != first.shape[:2]:
            raise QnnRepairError(
                f"images differ in size: {files[0]} is {_size(first)}, {path} is {_size(array)}; "
                "pass --resize N --crop M (shorter side to N, centre crop M, e.g. --resize 256 "
                "--crop 224) to bring them to one size"
            )
    if all(array.ndim == 2 for array in arrays):
        return np.stack(arrays)[..., None]
    # Gray images among colour ones: replicate the gray value, as Pillow's L -> RGB does.
    return np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])


def _decode(image_module: object, path: Path, size: ImageSize | None) -> np.ndarray:
    """(H, W) uint8 for a grayscale image, (H, W, 3) for any other; one file open at a time."""
    try:
        with image_module.open(path) as image:  # type: ignore[attr-defined]
            gray = image.mode in _GRAY_MODES
            image = image.convert("L" if gray else "RGB")
            if size:
                image = size.apply(image)
            return np.asarray(image, dtype=np.uint8)
    except OSError as err:  # UnidentifiedImageError and truncated-file errors are OSErrors
        raise QnnRepairError(
            f"cannot decode image {path} ({err}); the file is corrupt or not an image"
        ) from err


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _pillow() -> object:
    try:
        from PIL import Image
    except ImportError as err:
        raise QnnRepairError(
            "reading image folders needs Pillow; install it with pip install pillow"
        ) from err
    return Image
