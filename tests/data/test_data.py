"""Data sets, loaders for every supported format, normalization and splits (qnnrepair.data)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qnnrepair.data import Dataset, check_compatible, load_dataset, make_splits, to_tensor
from qnnrepair.errors import QnnRepairError
from qnnrepair.models import ModelInfo, model_info

SHARED_DATA = Path(__file__).parents[3] / "shared" / "data"


def expect_error(match: str) -> pytest.RaisesContext:
    return pytest.raises(QnnRepairError, match=match)


def assert_one_line(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"


def tiny(n: int = 12, shape: tuple[int, int, int] = (8, 8, 3), classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % classes
    return images, labels


# --- Dataset ---------------------------------------------------------------------------------


def test_dataset_holds_images_and_labels() -> None:
    images, labels = tiny()
    data = Dataset(images, labels.astype(np.int32))
    assert len(data) == 12 and data.labels.dtype == np.int64
    assert data.image_shape == (8, 8, 3) and data.num_classes == 3
    assert repr(data) == "Dataset(n_samples=12, image_shape=8x8x3, num_classes=3)"
    assert Dataset(images, labels, ("a", "b", "c", "d")).num_classes == 4


def test_subset_keeps_order_and_copies() -> None:
    images, labels = tiny()
    data = Dataset(images, labels)
    part = data.subset([5, 1, 7])
    assert np.array_equal(part.images, images[[5, 1, 7]])
    assert np.array_equal(part.labels, labels[[5, 1, 7]])
    part.images[0] = 0
    assert np.array_equal(data.images, images), "subset shares memory with its source"
    assert len(data.subset([])) == 0
    with expect_error("out of range"):
        data.subset([0, 12])
    with expect_error("1-D list of integers"):
        data.subset([0.5])


BAD_DATASETS = {
    "not an array": (lambda i, y: (i.tolist(), y), "must be a numpy array"),
    "3-D images": (lambda i, y: (i[..., 0], y), r"must have shape \(N, H, W, C\)"),
    "float images": (lambda i, y: (i / 255.0, y), "must be uint8 pixels"),
    "2-D labels": (lambda i, y: (i, y[:, None]), "labels must be a 1-D array"),
    "float labels": (lambda i, y: (i, y.astype(float)), "labels must be integers"),
    "negative labels": (lambda i, y: (i, y - 1), "must not be negative, found -1"),
    "lengths": (lambda i, y: (i, y[:-1]), "12 images but 11 labels"),
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_dataset_rejects_bad_arrays(case: str) -> None:
    change, match = BAD_DATASETS[case]
    with expect_error(match) as err:
        Dataset(*change(*tiny()))
    assert_one_line(err)


def test_dataset_rejects_labels_beyond_named_classes() -> None:
    with expect_error("label 2 is out of range for 2 classes"):
        Dataset(*tiny(), classes=("cat", "dog"))


# --- npz -------------------------------------------------------------------------------------


def test_npz_roundtrip(tmp_path: Path) -> None:
    images, labels = tiny()
    np.savez(tmp_path / "d.npz", x=images, y=labels.astype(np.uint8))
    data = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)


def test_npz_grayscale_gets_a_channel_axis(tmp_path: Path) -> None:
    images, labels = tiny(shape=(6, 5, 1))
    np.savez(tmp_path / "d.npz", x=images[..., 0], y=labels)
    assert load_dataset(tmp_path / "d.npz").image_shape == (6, 5, 1)


def test_npz_keras_layout_picks_the_split(tmp_path: Path) -> None:
    (x_train, y_train), (x_test, y_test) = tiny(10), tiny(4, seed=1)
    np.savez(tmp_path / "k.npz", x_train=x_train, y_train=y_train[:, None], x_test=x_test,
             y_test=y_test[:, None])  # fmt: skip
    assert np.array_equal(load_dataset(tmp_path / "k.npz", "test").images, x_test)
    assert np.array_equal(load_dataset(tmp_path / "k.npz", "train").labels, y_train)


def _npz(**arrays: np.ndarray):
    def write(tmp_path: Path) -> Path:
        np.savez(tmp_path / "d.npz", **arrays)
        return tmp_path / "d.npz"

    return write


def _junk(name: str, data: bytes):
    def write(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    return write


def _truncated_npz(tmp_path: Path) -> Path:
    path = _npz(x=tiny(200)[0], y=tiny(200)[1])(tmp_path)
    path.write_bytes(path.read_bytes()[:-3000])
    return path


_IMAGES, _LABELS = tiny()
BAD_NPZ = {
    "junk": (_junk("d.npz", b"not a zip file at all"), "is corrupt, truncated"),
    "truncated": (_truncated_npz, "is corrupt, truncated"),
    "pickled": (_npz(x=np.array([object()]), y=_LABELS), "is corrupt, truncated or holds pickled"),
    "keys": (_npz(images=_IMAGES, labels=_LABELS), r"has arrays \['images', 'labels'\], expected"),
    "2-D x": (_npz(x=_IMAGES[:, :, 0, 0], y=_LABELS), r"expected images \(N, H, W, C\)"),
    "NCHW": (_npz(x=_IMAGES.transpose(0, 3, 1, 2), y=_LABELS), "looks channels-first"),
    "float x": (_npz(x=_IMAGES / 255.0, y=_LABELS), "has dtype float64; store uint8"),
    "big ints": (_npz(x=_IMAGES.astype(np.int32) * 2, y=_LABELS), "has dtype int32; store"),
    "one-hot": (_npz(x=_IMAGES, y=np.eye(3)[_LABELS]), "for one-hot labels store y.argmax"),
    "count": (_npz(x=_IMAGES, y=_LABELS[:5]), "12 images but 5 labels"),
    "float y": (_npz(x=_IMAGES, y=_LABELS / 1.0), "store integer class labels"),
    "negative": (_npz(x=_IMAGES, y=_LABELS - 1), r"negative labels \(min -1\)"),
    "empty": (_npz(x=_IMAGES[:0], y=_LABELS[:0]), "is empty"),
    "not npz": (_junk("d.csv", b"1,2,3"), "unknown data format"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_npz_errors_are_one_line(tmp_path: Path, case: str) -> None:
    make, match = BAD_NPZ[case]
    with expect_error(match) as err:
        load_dataset(make(tmp_path))
    assert_one_line(err)


def test_npz_small_integer_images_are_accepted(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_IMAGES.astype(np.int64), y=_LABELS)
    assert load_dataset(tmp_path / "d.npz").images.dtype == np.uint8


# --- idx -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_loads_both_splits(tmp_path: Path, gz: bool) -> None:
    train, test = tiny(10, (5, 4, 1)), tiny(3, (5, 4, 1), seed=1)
    write_idx(tmp_path, "train", train[0][..., 0], train[1], gz)
    write_idx(tmp_path, "t10k", test[0][..., 0], test[1], gz)
    loaded = load_dataset(tmp_path, "train")
    assert np.array_equal(loaded.images, train[0]) and np.array_equal(loaded.labels, train[1])
    assert np.array_equal(load_dataset(tmp_path, "test").images, test[0])


def _idx_case(images: bytes, labels: bytes, gz: bool = False):
    def write(tmp_path: Path) -> Path:
        suffix = ".gz" if gz else ""
        (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
        if labels:
            (tmp_path / f"train-labels-idx1-ubyte{suffix}").write_bytes(labels)
        return tmp_path

    return write


_IDX_IMAGES = idx_bytes(_IMAGES[..., 0])
_IDX_LABELS = idx_bytes(_LABELS)
BAD_IDX = {
    "truncated": (_idx_case(_IDX_IMAGES[:-10], _IDX_LABELS), "the file is truncated or corrupt"),
    "bad gzip": (
        _idx_case(gzip.compress(_IDX_IMAGES)[:-20], gzip.compress(_IDX_LABELS), True),
        "corrupt or truncated",
    ),  # fmt: skip
    "magic": (_idx_case(b"\x01\x02" + _IDX_IMAGES[2:], _IDX_LABELS), "bad magic number"),
    "type": (_idx_case(_IDX_IMAGES[:2] + b"\x0d" + _IDX_IMAGES[3:], _IDX_LABELS), "type code"),
    "swapped": (_idx_case(_IDX_LABELS, _IDX_IMAGES), "is it a labels file"),
    "count": (_idx_case(_IDX_IMAGES, idx_bytes(_LABELS[:4])), "12 images but .* has 4 labels"),
    "no labels": (_idx_case(_IDX_IMAGES, b""), "no train-labels file"),
    "empty": (_idx_case(idx_bytes(_IMAGES[:0, ..., 0]), idx_bytes(_LABELS[:0])), "is empty"),
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_idx_errors_are_one_line(tmp_path: Path, case: str) -> None:
    make, match = BAD_IDX[case]
    with expect_error(match) as err:
        load_dataset(make(tmp_path), "train")
    assert_one_line(err)


def test_idx_folder_without_the_split(tmp_path: Path) -> None:
    write_idx(tmp_path, "train", _IMAGES[..., 0], _LABELS, gz=True)
    with expect_error("has idx files but none for the test split"):
        load_dataset(tmp_path, "test")


# --- CIFAR-10 python batches -------------------------------------------------------------------


def cifar_batch(images: np.ndarray, labels: np.ndarray) -> dict:
    """A batch laid out like the official files: bytes keys, (N, 3072) channel-major rows."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return {b"batch_label": b"test", b"labels": [int(v) for v in labels], b"data": rows}


def write_pickle(path: Path, obj: object) -> None:
    # Protocol 2 as in the official (Python 2) files, with numpy 1's module path, which the
    # official files name and numpy 2 has renamed.
    data = pickle.dumps(obj, protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    path.write_bytes(data)


def write_cifar(folder: Path, n_train_batches: int = 2, n: int = 4) -> tuple[list, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    train = [tiny(n, (32, 32, 3), classes=10, seed=i) for i in range(n_train_batches)]
    for i, (images, labels) in enumerate(train, start=1):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(images, labels))
    test = tiny(n, (32, 32, 3), classes=10, seed=99)
    write_pickle(folder / "test_batch", cifar_batch(*test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return train, test


def test_cifar_batches_load_in_order_with_class_names(tmp_path: Path) -> None:
    train, test = write_cifar(tmp_path, n_train_batches=2)
    # A tenth batch must come after the second, not between 1 and 2 as a text sort would put it.
    extra = tiny(4, (32, 32, 3), classes=10, seed=10)
    write_pickle(tmp_path / "data_batch_10", cifar_batch(*extra))
    data = load_dataset(tmp_path, "train")
    assert np.array_equal(data.images, np.concatenate([train[0][0], train[1][0], extra[0]]))
    assert np.array_equal(data.labels, np.concatenate([train[0][1], train[1][1], extra[1]]))
    assert data.classes[0] == "airplane" and data.num_classes == 10
    assert np.array_equal(load_dataset(tmp_path, "test").images, test[0])


def test_cifar_batches_found_inside_the_extracted_archive_folder(tmp_path: Path) -> None:
    _, test = write_cifar(tmp_path / "cifar-10-batches-py", n_train_batches=1)
    assert np.array_equal(load_dataset(tmp_path, "test").labels, test[1])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def _cifar_case(batch: object, truncate: bool = False):
    def write(tmp_path: Path) -> Path:
        write_pickle(tmp_path / "data_batch_1", batch)
        if truncate:
            path = tmp_path / "data_batch_1"
            path.write_bytes(path.read_bytes()[:-500])
        return tmp_path

    return write


_BATCH = cifar_batch(*tiny(4, (32, 32, 3), classes=10))
BAD_CIFAR = {
    "code": (_cifar_case({**_BATCH, b"extra": _RunsCode()}), "asks to run code"),
    "truncated": (_cifar_case(_BATCH, truncate=True), "corrupt or truncated"),
    "not a dict": (_cifar_case([1, 2]), "holds a list, not a CIFAR-10 batch"),
    "no data": (_cifar_case({b"labels": [1]}), "has no 'data' entry"),
    "shape": (_cifar_case({**_BATCH, b"data": _BATCH[b"data"][:, :100]}), r"uint8 \(N, 3072\)"),
    "labels": (_cifar_case({**_BATCH, b"labels": [0, 1, 2, 10]}), r"labels outside 0..9"),
    "count": (_cifar_case({**_BATCH, b"labels": [0]}), "4 images but 1 labels"),
}


@pytest.mark.parametrize("case", BAD_CIFAR)
def test_cifar_errors_are_one_line(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    make, match = BAD_CIFAR[case]
    with expect_error(match) as err:
        load_dataset(make(tmp_path), "train")
    assert_one_line(err)
    assert "must never run" not in capsys.readouterr().out


def test_cifar_folder_without_test_batch(tmp_path: Path) -> None:
    write_pickle(tmp_path / "data_batch_1", _BATCH)
    with expect_error("has no CIFAR-10 test batches"):
        load_dataset(tmp_path, "test")


# --- image folders ---------------------------------------------------------------------------

PIL = pytest.importorskip("PIL.Image")


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def test_image_folder_labels_by_sorted_class_name(tmp_path: Path) -> None:
    images, _ = tiny(4, (6, 5, 3))
    for i, name in enumerate(["dog/b.png", "dog/a.png", "cat/x.png", "cat/.hidden.png"]):
        write_png(tmp_path / name, images[i])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [0, 1, 1]
    # Files in sorted order: cat/x.png, dog/a.png, dog/b.png; PNG is lossless.
    assert np.array_equal(data.images, images[[2, 1, 0]])


def test_image_folder_grayscale_and_mixed(tmp_path: Path) -> None:
    gray, _ = tiny(2, (4, 4, 1))
    write_png(tmp_path / "g" / "a" / "1.png", gray[0])
    write_png(tmp_path / "g" / "b" / "1.png", gray[1])
    assert load_dataset(tmp_path / "g").image_shape == (4, 4, 1)
    write_png(tmp_path / "g" / "b" / "2.png", tiny(1, (4, 4, 3))[0][0])
    mixed = load_dataset(tmp_path / "g")
    assert mixed.image_shape == (4, 4, 3)
    assert np.array_equal(mixed.images[0], np.repeat(gray[0], 3, axis=2))


def test_image_folder_with_train_and_test_subfolders(tmp_path: Path) -> None:
    images, _ = tiny(3, (4, 4, 3))
    write_png(tmp_path / "train" / "a" / "1.png", images[0])
    write_png(tmp_path / "train" / "b" / "1.png", images[1])
    write_png(tmp_path / "test" / "b" / "1.png", images[2])
    assert len(load_dataset(tmp_path, "train")) == 2
    test = load_dataset(tmp_path, "test")
    assert test.classes == ("b",) and np.array_equal(test.images[0], images[2])


def _sizes_differ(tmp_path: Path) -> Path:
    write_png(tmp_path / "a" / "1.png", tiny(1, (4, 4, 3))[0][0])
    write_png(tmp_path / "b" / "1.png", tiny(1, (5, 4, 3))[0][0])
    return tmp_path


def _corrupt_png(tmp_path: Path) -> Path:
    write_png(tmp_path / "a" / "1.png", tiny(1, (4, 4, 3))[0][0])
    (tmp_path / "a" / "2.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def _no_images(tmp_path: Path) -> Path:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hi")
    return tmp_path


BAD_FOLDERS = {
    "sizes": (_sizes_differ, "images differ in size: .* is 4x4, .* is 4x5"),
    "corrupt": (_corrupt_png, "cannot decode image .*2.png"),
    "no images": (_no_images, "has no images"),
    "nothing": (lambda t: t, "unknown data format in folder"),
    "missing": (lambda t: t / "nope", "does not exist"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_folder_errors_are_one_line(tmp_path: Path, case: str) -> None:
    make, match = BAD_FOLDERS[case]
    with expect_error(match) as err:
        load_dataset(make(tmp_path))
    assert_one_line(err)


def test_load_dataset_rejects_unknown_split(tmp_path: Path) -> None:
    with expect_error("split must be 'train' or 'test'"):
        load_dataset(tmp_path, "validation")


# --- check_compatible, to_tensor -------------------------------------------------------------


def test_check_compatible() -> None:
    cifar_like = Dataset(*tiny(10, (32, 32, 3), classes=10))
    check_compatible(cifar_like, model_info("resnet20"))
    mnist_like = Dataset(*tiny(4, (28, 28, 1)))
    with expect_error("images are 28x28x1, model resnet20 expects 32x32x3"):
        check_compatible(mnist_like, model_info("resnet20"))
    with expect_error("labels go up to 9, model conv3 has 5 classes"):
        check_compatible(cifar_like, model_info("conv3", num_classes=5))


def test_to_tensor_scales_then_normalizes() -> None:
    images, _ = tiny(3, (4, 5, 3))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x = to_tensor(images, mean, std)
    assert x.shape == (3, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    want = (images.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    error = np.abs(x.numpy() - want.transpose(0, 3, 1, 2)).max()
    assert error < 1e-5, f"to_tensor differs from the float64 reference by {error}"


def test_to_tensor_rejects_bad_input() -> None:
    with expect_error("needs uint8 images"):
        to_tensor(np.zeros((1, 4, 4, 3)), (0, 0, 0), (1, 1, 1))
    with expect_error("3 channels but mean/std have 1/1 values"):
        to_tensor(np.zeros((1, 4, 4, 3), np.uint8), (0.5,), (0.5,))


def test_model_info_normalization_feeds_to_tensor() -> None:
    info: ModelInfo = model_info("resnet20")
    x = to_tensor(np.full((1, 2, 2, 3), 255, np.uint8), info.mean, info.std)
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor(info.mean)) / torch.tensor(info.std))


# --- splits ----------------------------------------------------------------------------------


def pool(n: int = 100) -> Dataset:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # pixel value = index
    return Dataset(images, np.arange(n) % 10)


def test_splits_are_disjoint_deterministic_and_sized() -> None:
    splits = make_splits(pool(), None, n_repair=20, n_validation=30, n_test=40, seed=3)
    ids = [set(s.images.ravel().tolist()) for s in (splits.repair, splits.validation, splits.test)]
    assert [len(i) for i in ids] == [20, 30, 40]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = make_splits(pool(), None, n_repair=20, n_validation=30, n_test=40, seed=3)
    assert np.array_equal(again.repair.images, splits.repair.images)
    assert np.array_equal(again.test_indices, splits.test_indices)
    other = make_splits(pool(), None, n_repair=20, n_validation=30, n_test=40, seed=4)
    assert not np.array_equal(other.repair.images, splits.repair.images)
    assert repr(splits) == "Splits(repair=20, validation=30 (training), test=40)"


def test_splits_follow_numpy_pcg64_permutation() -> None:
    splits = make_splits(pool(), None, n_repair=5, n_validation=5, seed=7)
    order = np.random.Generator(np.random.PCG64(7)).permutation(100)
    assert np.array_equal(splits.repair_indices, np.sort(order[:5]))
    assert np.array_equal(splits.validation_indices, np.sort(order[5:10]))
    assert len(splits.test) == 90, "without n_test the rest of the pool is the test set"


def test_repair_set_does_not_depend_on_validation_size() -> None:
    small = make_splits(pool(), None, n_repair=10, n_validation=5, seed=1)
    large = make_splits(pool(), None, n_repair=10, n_validation=50, seed=1)
    assert np.array_equal(small.repair_indices, large.repair_indices)


def test_given_test_set_holds_validation_and_test() -> None:
    test = Dataset(*tiny(8, (1, 1, 1)))
    splits = make_splits(pool(), test, n_repair=10, n_validation=3)
    assert splits.validation_source == "held-out"
    drawn = np.sort(np.concatenate([splits.validation_indices, splits.test_indices]))
    assert np.array_equal(drawn, np.arange(8))  # V and T split the held-out set
    assert np.array_equal(splits.test.images, test.images[splits.test_indices])
    first = make_splits(pool(), test, n_repair=10, n_validation=3, n_test=3)
    assert np.array_equal(first.test_indices, splits.test_indices[:3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(test=None, n_repair=60, n_validation=50), "pool has 100 images, too few for 60"),
        (dict(test=None, n_repair=60, n_validation=40), r"\+ at least 1 test"),
        (dict(test=None, n_repair=10, n_validation=10, n_test=81), r"\+ 81 test images"),
        (dict(test=None, n_repair=-1, n_validation=10), "n_repair must be a non-negative"),
        (dict(test=Dataset(*tiny(4)), n_repair=1, n_validation=1), "test images are 8x8x3"),
        (dict(test=pool(5), n_repair=1, n_validation=1, n_test=6),
         r"held-out data has 5 images, too few for 1 validation \+ 6 test"),
    ],
)
def test_make_splits_errors(kwargs: dict, match: str) -> None:
    with expect_error(match) as err:
        make_splits(pool(), **kwargs)
    assert_one_line(err)


# --- the shared real data ----------------------------------------------------------------------


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"shared data absent: {path}")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_mnist_style_idx_files(name: str) -> None:
    if not (SHARED_DATA / name).exists():
        pytest.skip(f"shared data absent: {SHARED_DATA / name}")
    train = load_dataset(SHARED_DATA / name, "train")
    test = load_dataset(SHARED_DATA / name, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image_shape == (28, 28, 1) and test.num_classes == 10
    if name == "mnist":  # the well-known first labels of MNIST
        assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
        assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]


@needs(SHARED_DATA / "cifar10" / "test.npz")
def test_real_cifar10_npz_fits_the_cifar_models() -> None:
    test = load_dataset(SHARED_DATA / "cifar10" / "test.npz", "test")
    assert len(test) == 10000 and test.image_shape == (32, 32, 3)
    assert test.labels[:5].tolist() == [3, 8, 8, 0, 6]  # cat, ship, ship, airplane, frog
    check_compatible(test, model_info("resnet20"))
    splits = make_splits(test, None, n_repair=1000, n_validation=1000, n_test=2000, seed=0)
    assert len(set(splits.repair_indices) | set(splits.validation_indices)) == 2000
