"""`qnnrepair localize` prints the ranking that `qnnrepair repair` repairs: the same neurons in
the same order with the same scores, by default and with the ranking flags."""

import json

import pytest

from qnnrepair.cli import main
from qnnrepair.testing import TINY_MODEL_SPEC, write_tiny_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    write_tiny_task(folder)
    quantized = folder / "q.qnn"
    assert main(["--no-progress", "quantize", "--model", TINY_MODEL_SPEC, "--weights",
                 str(folder / "weights.pt"), "--data", str(folder / "data.npz"),
                 "--n-repair", "80", "--n-validation", "80", "--setting", "w3a4",
                 "--num-classes", "4", "--output", str(quantized)]) == 0
    return folder


@pytest.mark.parametrize("flags", [[], ["--metric", "tarantula", "--layers", "all",
                                        "--seed", "3"]], ids=["default", "flags"])
def test_localize_and_repair_rank_the_same_neurons(task, tmp_path, capsys, flags):
    data = ["--quantized", str(task / "q.qnn"), "--data", str(task / "data.npz"),
            "--n-repair", "80", "--n-validation", "80", "--num-classes", "4", *flags]
    ranking_file, repaired = tmp_path / "ranking.json", tmp_path / "repaired.qnn"
    assert main(["--no-progress", "localize", *data, "--output", str(ranking_file)]) == 0
    assert main(["--no-progress", "repair", *data, "--workers", "1",
                 "--output", str(repaired)]) == 0
    capsys.readouterr()
    ranking = json.loads(ranking_file.read_text())["ranking"]
    report = json.loads((tmp_path / "repaired.report.json").read_text())
    top = report["top_neurons"]
    n_neurons = 6 + 8 + (4 if "all" in flags else 0)  # conv1, conv2 (hidden), linear
    print(f"{flags}: localize ranked {len(ranking)}, the report lists {len(top)}; "
          f"top 3 {[r['neuron'] for r in ranking[:3]]}")
    assert len(ranking) == n_neurons
    validation = report["accuracy"]["validation"]
    if validation["quantized"] >= validation["float"]:  # nothing to repair: decided unranked
        assert top == [] and report["changes"] == [] and report["steps"] == []
        return
    assert len(top) == min(n_neurons, 20)
    assert [name for name, _ in top] == [r["neuron"] for r in ranking[:len(top)]]
    for (name, score), row in zip(top, ranking):
        assert score == pytest.approx(row["score"], abs=0, nan_ok=True), name
    # The repair's changes can only be in ranked neurons.
    ranked = {r["neuron"] for r in ranking}
    assert {c["neuron"] for c in report["changes"]} <= ranked
