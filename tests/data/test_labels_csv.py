"""Folders listed in labels.csv: read in row order, classes.txt names, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qnnrepair.data import Dataset, check_compatible, load_dataset
from qnnrepair.errors import QnnRepairError
from qnnrepair.models import ModelInfo

Image = pytest.importorskip("PIL.Image")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet"


def write_folder(folder: Path, rows: list[str], sizes=None, header="file,label,source") -> list:
    """Images images/000k.png (4x6 RGB, distinct pixels) and a labels.csv of `rows`."""
    (folder / "images").mkdir(parents=True)
    arrays = []
    for k in range(3):
        w, h = (sizes or {}).get(k, (6, 4))
        array = np.full((h, w, 3), 40 * k + 10, dtype=np.uint8)
        array[0, 0] = (k, 2 * k, 3 * k)
        Image.fromarray(array).save(folder / "images" / f"{k:04d}.png")
        arrays.append(array)
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return arrays


ROWS = ["images/0002.png,1,someone https://example.org", "images/0000.png,0,", "images/0001.png,2,"]


def test_reads_rows_in_order_and_ignores_extra_columns(tmp_path: Path) -> None:
    arrays = write_folder(tmp_path / "d", ROWS)
    data = load_dataset(tmp_path / "d")
    assert data.labels.tolist() == [1, 0, 2]
    assert data.image_shape == (4, 6, 3)
    np.testing.assert_array_equal(data.images, np.stack([arrays[2], arrays[0], arrays[1]]))
    assert data.classes is None


def test_class_names_from_classes_txt_here_or_in_the_parent(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", ROWS)
    (tmp_path / "classes.txt").write_text("0\tn01\ttench, Tinca tinca\n1\tn02\tgoldfish\n"
                                          "2\tn03\tshark\n")
    assert load_dataset(tmp_path / "d").classes == ("tench, Tinca tinca", "goldfish", "shark")
    (tmp_path / "d" / "classes.txt").write_text("cat\ndog\nbird\n")  # its own wins
    assert load_dataset(tmp_path / "d").classes == ("cat", "dog", "bird")
    (tmp_path / "d" / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(QnnRepairError, match=r"labels.csv line 4: label 2 is out of range for "
                       r"the 2 classes in .*classes.txt"):
        load_dataset(tmp_path / "d")


def test_train_and_test_subfolders(tmp_path: Path) -> None:
    write_folder(tmp_path / "d" / "train", ROWS)
    write_folder(tmp_path / "d" / "test", ROWS[:2])
    assert len(load_dataset(tmp_path / "d", "train")) == 3
    assert len(load_dataset(tmp_path / "d", "test")) == 2


@pytest.mark.parametrize("rows, header, needle", [
    (ROWS[:1] + ["images/0009.png,1,"], "file,label", r"line 3: image images/0009.png not found"),
    (ROWS[:2] + ["images/0001.png,cat,"], "file,label,source",
     r"line 4: label 'cat' of images/0001.png is not an integer"),
    (ROWS[:1] + ["images/0001.png,-1,"], "file,label,source", r"line 3: label -1 .* negative"),
    (["images/0000.png,", "images/0001.png,1"], "file,source", r"line 1: no 'label' column"),
    ([], "file,label", r"lists no images"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path, rows, header, needle):
    write_folder(tmp_path / "d", rows, header=header)
    with pytest.raises(QnnRepairError, match=needle) as info:
        load_dataset(tmp_path / "d")
    assert "labels.csv" in str(info.value) and "\n" not in str(info.value)


def test_images_of_different_sizes_are_one_line_error(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", ROWS, sizes={1: (5, 4)})
    with pytest.raises(QnnRepairError, match=r"images differ in size: .*0002.png is 6x4, "
                       r".*0001.png is 5x4; pass --resize N --crop M") as info:
        load_dataset(tmp_path / "d")
    assert "\n" not in str(info.value)


def test_label_out_of_range_for_the_model_is_one_line(tmp_path: Path) -> None:
    data = Dataset(np.zeros((3, 4, 6, 3), np.uint8), np.array([0, 5, 1]))
    info = ModelInfo("mynet:make", (3, 4, 6), 3, (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(QnnRepairError, match=r"labels go up to 5, model mynet:make has 3 classes "
                       r"\(labels 0..2; image 1 is the first out of range\); check the labels"):
        check_compatible(data, info)


@pytest.mark.skipif(not (SHARED / "nips17" / "labels.csv").is_file(), reason="no shared data")
def test_shared_imagenet_sample_reads_with_names(tmp_path: Path) -> None:
    """The first rows of the shared NIPS'17 sample (a copy of its labels.csv, 8 rows)."""
    lines = (SHARED / "nips17" / "labels.csv").read_text().splitlines()[:9]
    folder = tmp_path / "imagenet" / "nips17"
    folder.mkdir(parents=True)
    (folder / "images").symlink_to(SHARED / "nips17" / "images")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    (folder.parent / "classes.txt").symlink_to(SHARED / "classes.txt")
    data = load_dataset(folder)
    assert data.image_shape == (224, 224, 3) and len(data) == 8
    assert data.labels.tolist() == [int(line.split(",")[1]) for line in lines[1:]]
    assert len(data.classes) == 1000 and data.classes[1] == "goldfish, Carassius auratus"
