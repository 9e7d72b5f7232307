"""Bad input and interruptions on the `repair` command, in process on tiny files.

Each case either fails as one line on stderr starting "qnnrepair: error:" with exit code 2 (130
for Ctrl-C), or, where nothing failed, exits 0 and says why nothing was done. In every case the
input files are unchanged (sha256) and no partial or temporary output file is left.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qnnrepair.cli import main
from qnnrepair.data import to_tensor
from qnnrepair.evaluation import predict
from qnnrepair.quantization import load_quantized
from qnnrepair.repair.lp import solve_neuron_lp
from qnnrepair.testing import write_tiny_task

MODEL = "qnnrepair.testing:tiny_conv_net"


@pytest.fixture()
def files(tmp_path):
    """data.npz, weights.pt and q.qnn (their W3A4 quantization, made by the CLI)."""
    write_tiny_task(tmp_path)
    code = main(["--no-progress", "quantize", "--model", MODEL, "--weights",
                 str(tmp_path / "weights.pt"), "--data", str(tmp_path / "data.npz"),
                 "--n-repair", "80", "--n-validation", "80", "--setting", "w3a4", "--output",
                 str(tmp_path / "q.qnn")])
    assert code == 0
    return tmp_path


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def repair_args(files: Path, *extra: str, data: str = "data.npz") -> list[str]:
    return ["repair", "--data", str(files / data), "--n-repair", "80", "--n-validation", "80",
            "--workers", "1", "--output", str(files / "out.qnn"), "--report-html",
            str(files / "out.html"), *extra]


def assert_fails_cleanly(capsys, files: Path, argv: list[str], needle: str,
                         code_expected: int = 2, prefix: str = "qnnrepair: error:") -> str:
    """Run; one line on stderr, the exit code, nothing written, the inputs unchanged."""
    before = digests(files)
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    print(code, err)
    assert code == code_expected, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert digests(files) == before  # same files (no output, no temporary), same bytes
    return lines[0]


def test_truncated_quantized_model_file(files, capsys):
    whole = (files / "q.qnn").read_bytes()
    (files / "cut.qnn").write_bytes(whole[: len(whole) // 2])
    assert_fails_cleanly(capsys, files, repair_args(files, "--quantized", str(files / "cut.qnn")),
                         "not a readable qnnrepair model file")


def test_truncated_npz(files, capsys):
    whole = (files / "data.npz").read_bytes()
    (files / "cut.npz").write_bytes(whole[: len(whole) // 2])
    assert_fails_cleanly(capsys, files, repair_args(files, "--quantized", str(files / "q.qnn"),
                                                    data="cut.npz"), "truncated")


def test_weights_with_nan(files, capsys):
    state = torch.load(files / "weights.pt", weights_only=True)
    state["conv2.weight"][1, 2, 0, 0] = float("nan")
    torch.save(state, files / "nan.pt")
    assert_fails_cleanly(capsys, files, repair_args(files, "--model", MODEL, "--weights",
                                                    str(files / "nan.pt")), "NaN")


def test_quantized_file_with_model_of_another_architecture(files, capsys):
    assert_fails_cleanly(capsys, files, repair_args(files, "--quantized", str(files / "q.qnn"),
                                                    "--model", "conv3"), "does not match")


@pytest.mark.parametrize("source", ["quantized", "model"])
def test_empty_repair_set_is_an_error(files, capsys, source):
    """Zero repair images: nothing to calibrate, localize or fit on, and no way to tell
    whether anything fails. That is a mistake in the command, not a successful no-op."""
    given = ["--quantized", str(files / "q.qnn")] if source == "quantized" else \
        ["--model", MODEL, "--weights", str(files / "weights.pt")]
    argv = repair_args(files, *given)
    argv[argv.index("--n-repair") + 1] = "0"
    assert_fails_cleanly(capsys, files, argv, "repair set")


def test_single_class_data_is_an_error(files, capsys):
    """All labels one class: validation, which decides what a repair may keep, would accept a
    model that predicts that class for everything. Refuse rather than report 100%."""
    with np.load(files / "data.npz") as data:
        np.savez(files / "one.npz", x=data["x"], y=np.zeros_like(data["y"]))
    assert_fails_cleanly(capsys, files, repair_args(files, "--quantized", str(files / "q.qnn"),
                                                    data="one.npz"), "class")


def test_nothing_to_repair_exits_0_and_writes_the_model_unchanged(files, capsys):
    """Labels = the W8A8 model's own predictions: the quantized model fails no input."""
    code, _, err = run(capsys, "quantize", "--model", MODEL, "--weights",
                       str(files / "weights.pt"), "--data", str(files / "data.npz"),
                       "--n-repair", "80", "--n-validation", "80", "--setting", "w8a8",
                       "--output", str(files / "q8.qnn"))
    assert code == 0, err
    q8 = load_quantized(files / "q8.qnn")
    with np.load(files / "data.npz") as data:
        images = data["x"]
    labels = predict(q8.model, to_tensor(images, (0.0,) * 3, (1.0,) * 3)).numpy()
    assert len(np.unique(labels)) > 1  # not the single-class case
    np.savez(files / "agree.npz", x=images, y=labels)
    before = digests(files)

    code, out, err = run(capsys, *repair_args(files, "--quantized", str(files / "q8.qnn"),
                                              data="agree.npz"))
    print(out, err)
    assert code == 0 and not err.strip(), err
    assert "nothing to repair" in out.lower()
    repaired = load_quantized(files / "out.qnn")
    for key, value in q8.integer_state().items():
        assert torch.equal(repaired.integer_state()[key], value), key
    assert "Nothing to repair" in (files / "out.html").read_text()
    written = {"out.qnn", "out.report.json", "out.summary.txt", "out.html"}
    after = digests(files)
    assert set(after) == set(before) | written
    assert {k: after[k] for k in before} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_in_read_only_folder(files, capsys):
    folder = files / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        argv = repair_args(files, "--quantized", str(files / "q.qnn"))
        argv[argv.index("--output") + 1] = str(folder / "out.qnn")
        assert_fails_cleanly(capsys, files, argv, "not writable")
        assert not list(folder.iterdir())
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("flag", ["--output", "--report-html"])
def test_output_folder_is_a_file(files, capsys, flag):
    """Fails for root too (unlike a read-only folder): a path under a regular file."""
    argv = repair_args(files, "--quantized", str(files / "q.qnn"))
    argv[argv.index(flag) + 1] = str(files / "data.npz" / "out.x")
    assert_fails_cleanly(capsys, files, argv, str(files / "data.npz"))


def test_ctrl_c_during_repair_is_exit_130_and_writes_nothing(files, capsys, monkeypatch):
    from qnnrepair.repair import engine

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "build_candidate", interrupted)
    line = assert_fails_cleanly(capsys, files, repair_args(files, "--quantized",
                                                           str(files / "q.qnn")),
                                "no output file was written", code_expected=130,
                                prefix="qnnrepair: interrupted")
    assert calls, line  # the interrupt came from inside the repair loop


@pytest.mark.parametrize("mode", ["match", "sign"])
def test_lp_at_its_time_limit_changes_nothing(mode):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(60, 12))
    weight = rng.integers(-7, 8, 12)
    target = 0.05 * (inputs @ (weight + rng.integers(-2, 3, 12)))
    free = solve_neuron_lp(inputs, target, weight, 0.05, 0.0, -7, 7, mode=mode, integer=True)
    assert free.changed  # with time, the LP does change this neuron
    result = solve_neuron_lp(inputs, target, weight, 0.05, 0.0, -7, 7, mode=mode,
                             integer=True, time_limit=0.0)
    print(result)
    assert "time_limit" in result.status
    assert not result.changed and not np.any(result.delta_weight)
    assert result.objective_rounded == result.objective_unchanged
