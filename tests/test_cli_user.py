"""A new user's own model and data: module:factory from the working folder, path/file.py:factory,
--mean/--std, .qnn files used from another folder, bench on a user model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from qnnrepair.cli import main
from qnnrepair.errors import QnnRepairError
from qnnrepair.pipeline import prepare
from qnnrepair.quantization import load_quantized
from qnnrepair.testing import write_tiny_task

NET = ("from qnnrepair.testing import tiny_conv_net\n\n\n"
       "def make_net():\n    return tiny_conv_net()\n")
SIZES = ["--n-repair", "40", "--n-validation", "40"]


@pytest.fixture()
def task(tmp_path, monkeypatch):
    """tmp/task: data.npz, weights.pt and a user module `usernet_<test>.py`; cwd = tmp/task.
    Modules the test imports are dropped from sys.modules afterwards."""
    folder = tmp_path / "task"
    folder.mkdir()
    write_tiny_task(folder)
    monkeypatch.chdir(folder)
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("usernet", "helpers_", "qnnrepair_user_model_")):
            del sys.modules[name]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def float_accuracy(out: str) -> float:
    line = next(line for line in out.splitlines() if line.strip().startswith("repair"))
    return float(line.split("float")[1].split("%")[0])


def test_module_factory_from_the_working_folder(task, capsys):
    (task / "usernet_cwd.py").write_text(NET)
    code, out, err = run(capsys, "evaluate", "--model", "usernet_cwd:make_net", "--weights",
                         "weights.pt", "--data", "data.npz", "--setting", "w8a8", *SIZES)
    assert code == 0, err
    assert "note: usernet_cwd:make_net gets pixels scaled to [0, 1]" in out and not err
    assert str(task) not in sys.path  # the working folder was on sys.path only while loading


def test_file_factory_with_a_neighbour_import(task, capsys, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "helpers_tiny.py").write_text("from qnnrepair.testing import tiny_conv_net\n")
    (models / "usernet_file.py").write_text(
        "from helpers_tiny import tiny_conv_net\n\n\ndef make_net():\n    return tiny_conv_net()\n")
    code, out, err = run(capsys, "evaluate", "--model", "../models/usernet_file.py:make_net",
                         "--weights", "weights.pt", "--data", "data.npz", *SIZES)
    assert code == 0, err


def test_missing_module_says_where_it_looked(task, capsys):
    code, _, err = run(capsys, "evaluate", "--model", "usernet_nowhere:make_net", "--data",
                       "data.npz", *SIZES)
    assert code == 2 and err.count("\n") == 1
    assert f"neither installed nor in the working folder {task}" in err
    assert "--model path/to/file.py:factory" in err


def test_help_says_importing_runs_code(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "runs its code" in text and "--mean" in text and "docs/DATA.md" in text


def test_mean_std_reach_the_model_input(task):
    (task / "usernet_norm.py").write_text(NET)
    plain = prepare("usernet_norm:make_net", "weights.pt", "data.npz", n_repair=40,
                    n_validation=40)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    normed = prepare("usernet_norm:make_net", "weights.pt", "data.npz", n_repair=40,
                     n_validation=40, mean=mean, std=std)
    assert normed.info.mean == mean and normed.info.std == std
    want = (plain.images("repair") - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    err = (normed.images("repair") - want).abs().max().item()
    assert err <= 1e-5, f"normalized input off by {err}"


def test_mean_std_on_the_command_line(task, capsys):
    (task / "usernet_cli.py").write_text(NET)
    argv = ["evaluate", "--model", "usernet_cli:make_net", "--weights", "weights.pt", "--data",
            "data.npz", "--setting", "w8a8", *SIZES]
    code, plain, err = run(capsys, *argv)
    assert code == 0 and "note:" in plain
    code, normed, err = run(capsys, *argv, "--mean", "0.5", "0.5", "0.5", "--std", "0.1",
                            "0.1", "0.1")
    assert code == 0 and "note:" not in normed, err
    assert float_accuracy(plain) != float_accuracy(normed)  # the model saw other input
    code, _, err = run(capsys, *argv, "--mean", "0.5")
    assert code == 2 and "one value per channel (3)" in err and err.count("\n") == 1


def test_zoo_model_refuses_other_normalization(task, capsys):
    np.savez(task / "cifar.npz", x=np.zeros((30, 32, 32, 3), np.uint8), y=np.arange(30) % 10)
    code, _, err = run(capsys, "evaluate", "--model", "conv3", "--data", "cifar.npz",
                       "--mean", "0.5", "0.5", "0.5", "--n-repair", "10", "--n-validation", "10")
    assert code == 2 and err.count("\n") == 1
    assert "zoo model conv3 normalizes with mean 0.485 0.456 0.406" in err
    code, _, err = run(capsys, "evaluate", "--model", "conv3", "--data", "cifar.npz", "--mean",
                       "0.485", "0.456", "0.406", "--n-repair", "10", "--n-validation", "10")
    assert code == 0, err


def quantize(capsys, spec: str) -> None:
    code, _, err = run(capsys, "quantize", "--model", spec, "--weights", "weights.pt", "--data",
                       "data.npz", "--setting", "w4a8", "--output", "q.qnn", *SIZES)
    assert code == 0, err


def test_qnn_of_a_module_factory_is_found_from_another_folder(task, capsys, tmp_path,
                                                                monkeypatch):
    (task / "usernet_away.py").write_text(NET)
    quantize(capsys, "usernet_away:make_net")
    payload = torch.load(task / "q.qnn", weights_only=True)
    assert payload["format_version"] == 3
    assert payload["model_origin"] == {"file": str(task / "usernet_away.py"),
                                       "path_entry": str(task)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    del sys.modules["usernet_away"]
    argv = ["evaluate", "--quantized", str(task / "q.qnn"), "--data", str(task / "data.npz"),
            *SIZES]
    code, out, err = run(capsys, *argv)
    assert code == 0, err  # imported from the folder recorded in the file

    moved = elsewhere / "net_here.py"
    (task / "usernet_away.py").rename(moved)
    del sys.modules["usernet_away"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "needs model spec 'usernet_away:make_net' (from " in err
    assert f"pass --model {task / 'usernet_away.py'}:make_net" in err
    code, _, err = run(capsys, *argv, "--model", "net_here.py:make_net")
    assert code == 0, err
    code, _, err = run(capsys, *argv, "--model", "net_here.py:other")
    assert code == 2 and "does not match" in err


def test_qnn_of_a_file_factory_uses_the_recorded_absolute_path(task, capsys, tmp_path,
                                                                 monkeypatch):
    (task / "usernet_abs.py").write_text(NET)
    quantize(capsys, "usernet_abs.py:make_net")
    monkeypatch.chdir(tmp_path)
    qmodel = load_quantized(task / "q.qnn")
    assert qmodel.model_spec == f"{task / 'usernet_abs.py'}:make_net"
    (task / "usernet_abs.py").unlink()
    with pytest.raises(QnnRepairError, match=r"whose file usernet_abs.py cannot be imported .* "
                       r"pass --model .*usernet_abs.py:make_net \(beside --quantized\)"):
        load_quantized(task / "q.qnn")


def test_version_1_files_still_read(task, capsys):
    quantize(capsys, "qnnrepair.testing:tiny_conv_net")
    payload = torch.load(task / "q.qnn", weights_only=True)
    payload["format_version"] = 1
    del payload["model_origin"]
    torch.save(payload, task / "old.qnn")
    assert load_quantized(task / "old.qnn").model_spec == "qnnrepair.testing:tiny_conv_net"
    payload["format_version"] = 9
    torch.save(payload, task / "new.qnn")
    with pytest.raises(QnnRepairError, match="format version 9, this qnnrepair reads versions 1"):
        load_quantized(task / "new.qnn")


def test_bench_takes_a_file_factory_with_mean_and_std(task, capsys):
    (task / "usernet_bench.py").write_text(NET)
    (task / "out").mkdir()
    with np.load(task / "data.npz") as data:
        x, y = data["x"], data["y"]
    np.savez(task / "train.npz", x=x[:120], y=y[:120])
    np.savez(task / "test.npz", x=x[120:], y=y[120:])
    code, text, err = run(capsys, "bench", "--checkpoint", "usernet_bench.py:make_net=weights.pt",
                          "--data", "train.npz", "--test-data", "test.npz", "--settings", "w3a4",
                          "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                          *SIZES, "--n-test", "60", "--output", "out")
    assert code == 0, err
    assert "note:" not in text
    rows = json.loads((task / "out" / "bench.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"usernet_bench.py:make_net"}
    assert {"rtn", "qnnrepair"} <= {r["method"] for r in rows}


def test_labels_csv_folder_class_names_reach_the_report(task, capsys):
    """A labels.csv folder with classes.txt: the repair report and its HTML page name classes."""
    Image = pytest.importorskip("PIL.Image")
    folder = task / "pictures"
    (folder / "images").mkdir(parents=True)
    with np.load(task / "data.npz") as data:
        x, y = data["x"], data["y"]
    rows = ["file,label,source"]
    for k, (image, label) in enumerate(zip(x, y)):
        Image.fromarray(image).save(folder / "images" / f"{k:04d}.png")
        rows.append(f"images/{k:04d}.png,{label},me")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    names = ["cat", "dog <b>", "tench, Tinca tinca", "bird"]
    (folder / "classes.txt").write_text("".join(f"{k}\tn0{k}\t{n}\n" for k, n in enumerate(names)))
    code, out, err = run(capsys, "repair", "--model", "qnnrepair.testing:tiny_conv_net",
                         "--weights", "weights.pt", "--data", "pictures", "--setting", "w3a4",
                         *SIZES, "--output", "r.qnn", "--report-html", "r.html")
    assert code == 0, err
    report = json.loads((task / "r.report.json").read_text())
    assert report["class_names"] == names
    page = (task / "r.html").read_text()
    assert "<td>dog &lt;b&gt;</td>" in page and "<td>tench, Tinca tinca</td>" in page
    assert ">tench</text>" in page  # the chart's axis shows the name up to its comma


def test_format_errors_point_to_a_real_document(task, capsys):
    from pathlib import Path

    (task / "empty").mkdir()
    code, _, err = run(capsys, "evaluate", "--model", "conv3", "--data", "empty", *SIZES)
    assert code == 2 and err.count("\n") == 1
    assert "docs/DATA.md" in err and "qnnrepair repair --help" in err
    code, _, err = run(capsys, "evaluate", "--model", "conv33", "--data", "data.npz", *SIZES)
    assert code == 2 and "docs/DATA.md" in err
    doc = (Path(__file__).parents[1] / "docs" / "DATA.md").read_text()
    for topic in ("### `.npz` file", "### MNIST-style idx folder", "### CIFAR-10 python batches",
                  "### Image folder", "### `labels.csv` folder", "path/to/file.py:factory",
                  "weights_only=True"):
        assert topic in doc, topic
