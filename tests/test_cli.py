"""The command line: each command end to end on tiny files, and bad input as one-line errors."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qnnrepair.cli import main
from qnnrepair.models import build_model
from qnnrepair.testing import tiny_conv_net, with_flags

MODEL = "qnnrepair.testing:tiny_conv_net"


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 120))
    # held-out images (validation is drawn from them when given as --test-data)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 120))
    torch.save(tiny_conv_net().state_dict(), tmp_path / "weights.pt")
    torch.save(build_model("resnet20").state_dict(), tmp_path / "resnet20.pt")
    return tmp_path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def common(files, *extra):
    return ["--model", MODEL, "--weights", str(files / "weights.pt"), "--data",
            str(files / "data.npz"), "--n-repair", "40", "--n-validation", "40", *extra]


def test_quantize_evaluate_localize_repair(files, capsys):
    before = {p.name: digest(p) for p in files.iterdir()}
    q = files / "q.qnn"
    code, out, _ = run(capsys, "quantize", *common(files, "--setting", "w3a4", "--output", str(q)))
    assert code == 0 and q.is_file(), out

    code, out, _ = run(capsys, "evaluate", "--quantized", str(q), "--data",
                       str(files / "data.npz"), "--n-repair", "40", "--n-validation", "40")
    assert code == 0 and "quantized" in out and "test" in out

    ranking = files / "ranking.json"
    code, out, _ = run(capsys, "localize", "--quantized", str(q), "--data",
                       str(files / "data.npz"), "--n-repair", "40", "--n-validation", "40",
                       "--output", str(ranking))
    assert code == 0
    # the neurons `repair` ranks by default: every hidden layer's (not the output layer's)
    assert len(json.loads(ranking.read_text())["ranking"]) == 6 + 8

    out_model = files / "repaired.qnn"
    code, out, _ = run(capsys, "repair", "--quantized", str(q), "--data",
                       str(files / "data.npz"), "--n-repair", "40", "--n-validation", "40",
                       "--workers", "1", "--output", str(out_model))
    assert code == 0, out
    report = json.loads((files / "repaired.report.json").read_text())
    assert set(report["accuracy"]) == {"repair", "validation", "test"}
    assert (files / "repaired.summary.txt").read_text().startswith("qnnrepair report")
    assert out_model.is_file()
    onnx_file = files / "repaired.onnx"
    code, out, _ = run(capsys, "export", "--quantized", str(out_model), "--data",
                       str(files / "data.npz"), "--n-repair", "40", "--n-validation", "40",
                       "--output", str(onnx_file))
    assert code == 0 and onnx_file.is_file() and "same predictions" in out, out
    for name, value in before.items():
        assert digest(files / name) == value, f"input file {name} was modified"


BAD_INPUTS = [
    (["--data", "{d}/missing.npz"], "does not exist"),
    (["--model", "resnet21"], "unknown model"),
    (["--setting", "w9a8"], "from 2 to 8"),
    (["--weights", "{d}/corrupt.pt"], "corrupt"),
    (["--model", "conv3", "--weights", "{d}/weights.pt"], "does not fit"),
    (["--data", "{d}/gray.npz"], "fails on images of shape 28x28x1"),
    (["--model", "resnet20", "--weights", "{d}/resnet20.pt", "--data", "{d}/gray.npz"],
     "expects 32x32x3"),
    (["--data", "{d}/labels.npz"], "label"),
]


@pytest.mark.parametrize("extra,needle", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, capsys, extra, needle):
    (files / "corrupt.pt").write_bytes(b"not a checkpoint")
    rng = np.random.default_rng(1)
    np.savez(files / "gray.npz", x=rng.integers(0, 256, (120, 28, 28), dtype=np.uint8),
             y=rng.integers(0, 4, 120))
    np.savez(files / "labels.npz", x=rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8),
             y=rng.integers(0, 9, 120))
    argv = with_flags(common(files, "--output", str(files / "out.qnn")), extra, d=files)
    code, out, err = run(capsys, "quantize", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qnnrepair: error:"), err
    assert needle in lines[0].lower()
    assert not (files / "out.qnn").exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".out.qnn")]


def test_missing_output_folder(files, capsys):
    code, _, err = run(capsys, "quantize", *common(files, "--output", str(files / "no" / "q.qnn")))
    assert code == 2 and "does not exist" in err


def bench_argv(files):
    """A results folder and a small W3A4 bench command line writing into it."""
    out = files / "results"
    out.mkdir()
    return out, ["bench", "--checkpoint", f"{MODEL}={files / 'weights.pt'}", "--data",
                 str(files / "data.npz"), "--test-data", str(files / "test.npz"), "--settings",
                 "w3a4", "--n-repair", "40", "--n-validation", "40", "--output", str(out)]


def test_bench_writes_table_json_and_plot_and_resumes(files, capsys):
    out, argv = bench_argv(files)
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert {"rtn", "squant", "adaround", "qnnrepair", "adaround+qnnrepair"} <= methods
    assert (out / "bench.md").read_text().startswith("# Side-by-side benchmark")
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    before = digest(out / "bench.json")

    code, text, err = run(capsys, *argv)  # every piece is there: nothing reruns
    assert code == 0 and "nothing to run" in text, err
    code, text, err = run(capsys, *argv[:-6], "--n-repair", "30", *argv[-4:])
    assert code == 2 and "--fresh" in err and err.count("\n") == 1
    assert digest(out / "bench.json") == before


def test_bench_runs_the_methods_asked_for(files, capsys):
    out, argv = bench_argv(files)
    code, _, err = run(capsys, *argv, "--methods", "rtn", "squant", "--on-top", "squant")
    assert code == 0, err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["rtn", "squant", "squant+qnnrepair"]
    code, _, err = run(capsys, *argv, "--name", "plain", "--methods", "rtn", "squant")
    assert code == 0, err  # stacked on the default on_top methods that run
    rows = json.loads((out / "plain.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["rtn", "squant", "squant+qnnrepair"]
    code, _, err = run(capsys, *argv, "--name", "bad", "--methods", "rtn", "--on-top", "squant")
    assert code == 2 and "not among the methods" in err and err.count("\n") == 1, err
    assert not (out / "bad.json").exists()


def test_bench_runs_split_into_files_merge_into_one_table(files, capsys):
    out = files / "results"
    out.mkdir()
    argv = ["bench", "--checkpoint", f"{MODEL}={files / 'weights.pt'}", "--data",
            str(files / "data.npz"), "--test-data", str(files / "test.npz"), "--n-repair", "40",
            "--n-validation", "40", "--output", str(out)]
    for setting in ("w3a4", "w4a4"):
        code, _, err = run(capsys, *argv, "--settings", setting, "--name", setting)
        assert code == 0, err
    parts = [out / "w3a4.json", out / "w4a4.json"]
    before = [digest(p) for p in parts]

    code, text, err = run(capsys, "bench", "--output", str(out), "--merge", *map(str, parts))
    assert code == 0, err
    merged = json.loads((out / "bench.json").read_text())
    runs = [json.loads(p.read_text()) for p in parts]
    assert merged["rows"] == runs[0]["rows"] + runs[1]["rows"]
    assert [p["command"] for p in merged["meta"]["pieces"]] == [
        r["meta"]["pieces"][0]["command"] for r in runs]
    header = next(line for line in (out / "bench.md").read_text().splitlines()
                  if line.startswith("| method |"))
    assert "W3A4" in header and "W4A4" in header
    assert [digest(p) for p in parts] == before

    resized = json.loads(parts[1].read_text())
    resized["meta"]["key"]["sizes"]["repair"] = 30
    (files / "resized.json").write_text(json.dumps(resized))
    for bad, needle in [([parts[0], parts[0]], "repeats"), ([parts[0], files / "x.json"],
                        "cannot read"), ([parts[0], files / "data.npz"], "not a bench"),
                        ([parts[0], files / "resized.json"], "other settings")]:
        code, _, err = run(capsys, "bench", "--output", str(out), "--name", "bad", "--merge",
                           *map(str, bad))
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (out / "bad.json").exists()
    code, _, err = run(capsys, "bench", "--output", str(out), "--name", "w3a4", "--merge",
                       *map(str, parts))
    assert code == 2 and "overwrite" in err and [digest(p) for p in parts] == before
    code, _, err = run(capsys, *argv, "--name", "bad", "--merge", *map(str, parts))
    assert code == 2 and "only joins finished runs" in err and not (out / "bad.json").exists()


def test_bench_runs_of_several_seeds_merge_into_mean_and_range(tmp_path, capsys):
    """Runs that differ only in the seed of their splits merge: each row keeps its seed, and a
    summary cell is the mean [lowest, highest] over seeds with the median CPU seconds."""
    def run_file(seed: int, qnnrepair_test: float, cpu: float) -> Path:
        rows = [{"model": "net", "setting": "w4a4", "method": m, "cpu_s": c, "wall_s": 1.0,
                 "float": {"repair": 90.0, "validation": 90.0, "test": 90.0 + seed},
                 "result": {"repair": 80.0, "validation": 80.0, "test": t}}
                for m, t, c in (("rtn", 70.0, 1.0), ("qnnrepair", qnnrepair_test, cpu))]
        key = {"config": {"methods": ["rtn", "qnnrepair"], "adaround_iters": 10, "seed": seed},
               "seed": seed, "sizes": {"repair": 40, "validation": 40, "test": "all"}}
        pieces = [{"command": f"qnnrepair bench --seed {seed}", "machine": "m", "wall_s": 2.0,
                   "done": ["net w4a4"]}]
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({"meta": {"key": key, "pieces": pieces}, "rows": rows}))
        return path

    parts = [run_file(0, 81.0, 10.0), run_file(1, 84.0, 30.0), run_file(2, 82.5, 20.0)]
    code, _, err = run(capsys, "bench", "--output", str(tmp_path), "--name", "seeds",
                       "--merge", *map(str, parts))
    assert code == 0, err
    merged = json.loads((tmp_path / "seeds.json").read_text())
    assert [r["seed"] for r in merged["rows"]] == [0, 0, 1, 1, 2, 2]
    assert merged["meta"]["key"]["seed"] == [0, 1, 2]
    table = (tmp_path / "seeds.md").read_text().splitlines()
    assert "| float | 91.00 [90.00, 92.00] |" in table
    assert "| rtn | 70.00 [70.00, 70.00] (1) |" in table
    assert "| qnnrepair | 82.50 [81.00, 84.00] (20) |" in table
    code, _, err = run(capsys, "bench", "--output", str(tmp_path), "--name", "twice",
                       "--merge", str(parts[0]), str(parts[1]), str(parts[0]))
    assert code == 2 and "repeats" in err and not (tmp_path / "twice.json").exists()
