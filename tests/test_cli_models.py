"""The verbs on users' models from files: refusals are one line, exit 2, nothing written, inputs
unchanged; in-place activations repair; raw photos of different sizes load with --resize/--crop."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from qnnrepair.cli import main
from qnnrepair.testing import write_tiny_task

MODELS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def inplace():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = inplace()

    def forward(self, x):
        return self.net(x), x


class Noisy(nn.Conv2d):
    def forward(self, x):
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return out + 0.1 * torch.randn_like(out)


def pair():
    return Pair()


class NoLayers(nn.Module):
    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)[:, :4]


def no_layers():
    return NoLayers()


def noisy():
    return nn.Sequential(Noisy(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
'''
SIZES = ["--n-repair", "40", "--n-validation", "40"]


@pytest.fixture()
def task(tmp_path, monkeypatch):
    write_tiny_task(tmp_path)
    (tmp_path / "user_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("factory, message", [
    ("pair", "the model returns a tuple, not a tensor of logits"),
    ("no_layers", "model has no Conv2d or Linear layer to quantize"),
    ("noisy", "module '0' (Noisy): its forward cannot be reproduced"),
])
@pytest.mark.parametrize("verb", ["quantize", "repair"])
def test_unsupported_models_exit_2_in_one_line_writing_nothing(task, capsys, factory, message,
                                                                verb):
    before = _digest(task / "data.npz")
    code, out, err = run(capsys, verb, "--model", f"user_models.py:{factory}", "--data",
                         "data.npz", *SIZES, "--output", "out.qnn")
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in task.iterdir() if p.name.startswith("out")) == []
    assert _digest(task / "data.npz") == before


def test_in_place_relu_model_repairs_with_the_defaults(task, capsys):
    code, out, err = run(capsys, "repair", "--model", "user_models.py:inplace", "--data",
                         "data.npz", *SIZES, "--setting", "w3a4", "--output", "r.qnn")
    assert code == 0, err
    assert "Traceback" not in err and (task / "r.qnn").is_file()
    code, out, err = run(capsys, "localize", "--model", "user_models.py:inplace", "--data",
                         "data.npz", *SIZES, "--setting", "w3a4", "--metric", "ochiai")
    assert code == 0, err


def test_raw_photos_of_different_sizes(task, capsys):
    folder = task / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        w, h = int(rng.integers(10, 30)), int(rng.integers(10, 30))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 4}\n")
    (folder / "labels.csv").write_text("file,label\n" + "".join(rows))
    argv = ["evaluate", "--model", "user_models.py:inplace", "--data", "photos",
            "--n-repair", "12", "--n-validation", "6"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--resize N --crop M" in err and err.count("\n") == 1
    code, out, err = run(capsys, *argv, "--resize", "10", "--crop", "8")
    assert code == 0, err
    assert "repair" in out and "test" in out


def test_localize_prints_and_writes_the_per_layer_table(task, capsys):
    import json

    code, out, err = run(capsys, "localize", "--model", "user_models.py:inplace", "--data",
                         "data.npz", *SIZES, "--setting", "w3a4", "--layer-images", "30",
                         "--output", "rank.json")
    assert code == 0, err
    assert "per layer, on 30 validation images" in out
    layers = json.loads((task / "rank.json").read_text())["layers"]
    assert layers["n_images"] == 30 and len(layers["layers"]) == 3
    assert {row["layer"] for row in layers["layers"]} == {"0", "3", "8"}
    code, out, err = run(capsys, "repair", "--model", "user_models.py:inplace", "--data",
                         "data.npz", *SIZES, "--setting", "w3a4", "--layer-images", "30",
                         "--output", "r.qnn")
    assert code == 0, err
    assert "per layer, on 30 validation images" in out
    report = json.loads((task / "r.report.json").read_text())
    assert report["layer_costs"]["n_images"] == 30


def test_same_inputs_and_seed_give_the_same_file_bytes(task, capsys):
    """Two repairs of the same model on the same data and seed write identical .qnn files, and
    two exports of it identical .onnx files (no temporary name or time inside them)."""
    pytest.importorskip("onnx")
    argv = ["repair", "--model", "user_models.py:inplace", "--data", "data.npz", *SIZES,
            "--setting", "w3a4", "--workers", "1"]
    for name in ("a", "b"):
        code, _, err = run(capsys, *argv, "--output", f"{name}.qnn")
        assert code == 0, err
        code, _, err = run(capsys, "export", "--quantized", f"{name}.qnn", "--data",
                           "data.npz", *SIZES, "--output", f"{name}.onnx")
        assert code == 0, err
    assert _digest(task / "a.qnn") == _digest(task / "b.qnn")
    assert _digest(task / "a.onnx") == _digest(task / "b.onnx")
