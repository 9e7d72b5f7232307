"""Training: the recipe learns a tiny task, is bit-identical from a seed, and writes weights that
`load_model` and `qnnrepair evaluate` read; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qnnrepair.cli import main
from qnnrepair.data import Dataset, to_tensor
from qnnrepair.models import CIFAR_MEAN, CIFAR_STD, load_model
from qnnrepair.testing import with_flags
from qnnrepair.training import (
    TrainConfig,
    augment,
    deterministic_mode,
    log_path,
    normalize,
    save_trained,
    train,
)

SHARED_DATA = Path(__file__).parents[3] / "shared" / "data" / "cifar10"
# conv3 on 256 images of 32x32: about 0.3 s per epoch on one thread.
TINY = TrainConfig(epochs=3, batch_size=32, lr=0.01, seed=0)


def colours(n: int, seed: int, n_classes: int = 4) -> Dataset:
    """32x32 images of one colour per class plus strong pixel noise: learnable in a few steps."""
    palette = np.random.default_rng(99).integers(40, 216, (n_classes, 3))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    images = palette[labels][:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3))
    return Dataset(np.clip(images, 0, 255).astype(np.uint8), labels)


@pytest.fixture(scope="module")
def tiny_data() -> tuple[Dataset, Dataset]:
    return colours(256, seed=0), colours(128, seed=1)


@pytest.fixture()
def files(tmp_path, tiny_data):
    train_set, test_set = tiny_data
    np.savez(tmp_path / "train.npz", x=train_set.images, y=train_set.labels)
    np.savez(tmp_path / "test.npz", x=test_set.images, y=test_set.labels)
    return tmp_path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(files: Path, *extra: str, out: str = "conv3.pt") -> list[str]:
    return ["train", "--model", "conv3", "--train", str(files / "train.npz"), "--test",
            str(files / "test.npz"), "--out", str(files / out), "--epochs", "3",
            "--batch-size", "32", "--lr", "0.01", "--seed", "0", *extra]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the library ---------------------------------------------------------------------------------

def test_learns_a_tiny_task(tiny_data):
    result = train("conv3", *tiny_data, TINY)
    losses = [record.train_loss for record in result.history]
    print(f"losses {losses}, test accuracy {result.test_accuracy:.2f}%")
    assert losses[-1] < 0.7 * losses[0], f"train loss did not fall: {losses}"
    assert result.test_accuracy >= 50.0, f"test accuracy {result.test_accuracy} (chance 25)"
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"


def test_same_seed_same_weights_bit_for_bit(tiny_data):
    first, second = (train("conv3", *tiny_data, TINY).model.state_dict() for _ in range(2))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"`{key}` differs between two runs"
    other = train("conv3", *tiny_data, TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=1))
    assert not torch.equal(first["fc2.weight"], other.model.state_dict()["fc2.weight"])


def test_callers_random_state_is_left_alone(tiny_data):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train("conv3", *tiny_data, TrainConfig(epochs=1, batch_size=64))
    assert torch.equal(torch.get_rng_state(), before)


def test_normalize_is_bit_identical_to_to_tensor(tiny_data):
    images = tiny_data[0].images[:16]
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert torch.equal(normalize(nchw, CIFAR_MEAN, CIFAR_STD),
                       to_tensor(images, CIFAR_MEAN, CIFAR_STD))


def test_augment_is_crop_of_padded_then_flip():
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    out = augment(images, torch.Generator().manual_seed(5), padding=2)
    replay = torch.Generator().manual_seed(5)  # the same draws, in the documented order
    top = torch.randint(0, 5, (6, 1), generator=replay)[:, 0]
    left = torch.randint(0, 5, (6, 1), generator=replay)[:, 0]
    flipped = (torch.rand((6, 1), generator=replay) < 0.5)[:, 0]
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(6):
        want = padded[i, :, top[i]:top[i] + 5, left[i]:left[i] + 7]
        want = want.flip(-1) if flipped[i] else want
        assert torch.equal(out[i], want), f"image {i}"
    assert out.dtype == torch.uint8 and 0 < int(flipped.sum()) < 6  # both branches were tested


def test_no_padding_no_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0), 0, flip=False), images)


def test_deterministic_mode_is_restored_after_an_error(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError), deterministic_mode(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so(tiny_data):
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        train("conv3", *tiny_data, TrainConfig(epochs=1, device="cuda"))


@pytest.mark.parametrize("field,value,needle", [
    ("epochs", 0, "epochs"), ("batch_size", -1, "batch size"), ("lr", 0.0, "learning rate"),
    ("weight_decay", -1e-4, "weight decay"), ("device", "tpu", "device"),
])
def test_config_is_checked_when_built(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**{field: value})


# --- files and the command line ------------------------------------------------------------------

def test_cli_trains_and_evaluate_reads_the_weights(files, capsys):
    code, out, err = run(capsys, *train_args(files))
    assert code == 0, err
    trained = float(re.search(r"final test accuracy ([\d.]+)%", out).group(1))
    weights = files / "conv3.pt"
    state = torch.load(weights, weights_only=True)
    assert set(state) == set(load_model("conv3").state_dict())

    model = load_model("conv3", weights)
    images = to_tensor(np.load(files / "test.npz")["x"], CIFAR_MEAN, CIFAR_STD)
    labels = torch.from_numpy(np.load(files / "test.npz")["y"])
    with torch.no_grad():
        direct = 100 * (model(images).argmax(1) == labels).double().mean().item()
    assert round(direct, 2) == trained, f"load_model gives {direct:.2f}, train said {trained}"

    # validation from a file of its own, so that the test split is the whole test file
    test = np.load(files / "test.npz")
    np.savez(files / "val.npz", x=test["x"][:, :, ::-1], y=test["y"])
    code, out, err = run(capsys, "evaluate", "--model", "conv3", "--weights", str(weights),
                         "--data", str(files / "train.npz"), "--test-data",
                         str(files / "test.npz"), "--validation-data", str(files / "val.npz"),
                         "--n-repair", "40", "--n-validation", "40")
    assert code == 0, err
    evaluated = float(re.search(r"test\s+\(\s*128 images\)\s+float\s+([\d.]+)%", out).group(1))
    assert evaluated == trained, f"evaluate says {evaluated}, train said {trained}"

    lines = [json.loads(line) for line in log_path(weights).read_text().splitlines()]
    assert lines[0]["kind"] == "config" and lines[0]["config"]["seed"] == 0
    epochs = lines[1:]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "test_accuracy", "seconds"} <= set(epochs[0])
    assert epochs[-1]["test_accuracy"] == pytest.approx(trained, abs=0.005)


def test_cli_same_seed_same_file(files, capsys):
    for name in ("a.pt", "b.pt"):
        assert run(capsys, *train_args(files, "--epochs", "1", out=name))[0] == 0
    assert digest(files / "a.pt") == digest(files / "b.pt")


def test_saved_weights_hold_only_tensors(tiny_data, tmp_path):
    result = train("conv3", *tiny_data, TrainConfig(epochs=1, batch_size=64))
    save_trained(result, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log.jsonl", "w.pt"]


BAD_INPUTS = [
    (["--model", "conv4"], "unknown model"),
    (["--model", "qnnrepair.testing:tiny_conv_net"], "zoo models only"),
    (["--train", "{d}/missing.npz"], "does not exist"),
    (["--test", "{d}/missing.npz"], "does not exist"),
    (["--train", "{d}/small.npz"], "expects 32x32x3"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch-size", "1000"], "larger than the training set"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:n"),
    (["--out", "{d}/no/conv3.pt"], "does not exist"),
]


@pytest.mark.parametrize("extra,needle", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, capsys, extra, needle):
    np.savez(files / "small.npz", x=np.zeros((64, 8, 8, 3), np.uint8), y=np.zeros(64, np.int64))
    before = {p.name: digest(p) for p in files.iterdir()}
    argv = with_flags(train_args(files), extra, d=files)
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qnnrepair: error:"), err
    assert needle in lines[0].lower(), lines[0]
    assert {p.name: digest(p) for p in files.iterdir()} == before  # nothing written or changed


def test_missing_flags_say_what_is_needed(files, capsys):
    code, _, err = run(capsys, "train", "--model", "conv3", "--train", str(files / "train.npz"))
    assert code == 2 and "--test" in err and "--out" in err


@pytest.mark.skipif(not (SHARED_DATA / "train30k.npz").exists(),
                    reason=f"shared data absent: {SHARED_DATA}")
def test_real_cifar_slice(tmp_path, capsys):
    """The shared CIFAR-10 files' first images go through the same command."""
    for name, n in (("train30k.npz", 256), ("test.npz", 128)):
        with np.load(SHARED_DATA / name) as data:
            np.savez(tmp_path / name, x=data["x"][:n], y=data["y"][:n])
    code, out, err = run(capsys, "train", "--model", "conv3", "--train",
                         str(tmp_path / "train30k.npz"), "--test", str(tmp_path / "test.npz"),
                         "--out", str(tmp_path / "conv3.pt"), "--epochs", "1", "--batch-size",
                         "64")
    assert code == 0, err
    row = json.loads(log_path(tmp_path / "conv3.pt").read_text().splitlines()[-1])
    print(row)
    assert np.isfinite(row["train_loss"]) and row["train_loss"] < 10
    saved = torch.load(tmp_path / "conv3.pt", weights_only=True)
    loaded = load_model("conv3", tmp_path / "conv3.pt").state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), f"{key}: loaded weights differ from the file"
