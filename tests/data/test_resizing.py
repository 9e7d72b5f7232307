"""--resize N --crop M: users' raw images of different sizes, the torchvision convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qnnrepair.data import load_dataset
from qnnrepair.data.resizing import ImageSize
from qnnrepair.errors import QnnRepairError


def _photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def raw_folder(tmp_path):
    """labels.csv with three JPEG-like photos of different sizes and aspect ratios."""
    sizes = [(40, 30), (30, 50), (64, 64)]
    for i, (w, h) in enumerate(sizes):
        _photo(tmp_path / f"{i}.png", w, h, i)
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(
        f"{i}.png,{i % 2}\n" for i in range(len(sizes))))
    return tmp_path


def test_shorter_side_then_centre_crop_as_torchvision():
    image = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint8).reshape(20, 40, 3))
    resized = ImageSize(resize=10).apply(image)
    assert resized.size == (20, 10)  # shorter side (height 20) to 10, width 40 -> 20
    cropped = ImageSize(resize=10, crop=8).apply(image)
    assert cropped.size == (8, 8)
    # centre crop: left = round((20 - 8) / 2) = 6, top = round((10 - 8) / 2) = 1
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(resized)[1:9, 6:14])


def test_images_of_different_sizes_need_the_flags(raw_folder):
    with pytest.raises(QnnRepairError, match="--resize N --crop M"):
        load_dataset(raw_folder)
    data = load_dataset(raw_folder, size=ImageSize(resize=32, crop=28))
    assert data.images.shape == (3, 28, 28, 3)


def test_arrays_are_resized_too(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 16, 24, 3), np.uint8), y=np.array([0, 1]))
    data = load_dataset(tmp_path / "d.npz", size=ImageSize(resize=8, crop=8))
    assert data.images.shape == (2, 8, 8, 3)


def test_a_crop_larger_than_the_image_is_refused(raw_folder):
    with pytest.raises(QnnRepairError, match="--crop 100 is larger than an image"):
        load_dataset(raw_folder, size=ImageSize(crop=100))
    with pytest.raises(QnnRepairError, match="--resize must be a positive"):
        ImageSize(resize=0)
