"""The HTML report: a real repair of a tiny model rendered to one self-contained page, its
numbers, its escaping, and the page rendered in headless Chromium.

QNNREPAIR_WRITE_SCREENSHOT=1 copies the Chromium screenshot of the report to docs/report.png.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qnnrepair.cli import main
from qnnrepair.html_report import render_html
from qnnrepair.report import MODELS, SPLITS, RepairReport
from qnnrepair.testing import write_tiny_task

MODEL = "qnnrepair.testing:tiny_conv_net"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report.png"
WINDOW = (1280, 2400)


@pytest.fixture(scope="module")
def repaired(tmp_path_factory):
    """(folder, report dict from the JSON sidecar, HTML text) of one CLI repair."""
    folder = tmp_path_factory.mktemp("html")
    write_tiny_task(folder)
    page = folder / "report.html"
    code = main(["--no-progress", "repair", "--model", MODEL, "--weights",
                 str(folder / "weights.pt"), "--data", str(folder / "data.npz"), "--setting",
                 "w3a4", "--n-repair", "80", "--n-validation", "80", "--workers", "1",
                 # the output layer too, ranked by output blame: on this tiny net the
                 # hidden-only default or an SBFL ranking keeps nothing
                 "--layers", "all", "--metric", "gradient", "--layer-images", "40",
                 "--output", str(folder / "repaired.qnn"), "--report-html", str(page)])
    assert code == 0
    report = json.loads((folder / "repaired.report.json").read_text())
    return folder, report, page.read_text(encoding="utf-8")


def cells(page: str) -> list[str]:
    """The text of every table cell."""
    return [m.group(1) for m in re.finditer(r"<t[dh][^>]*>([^<]*)</t[dh]>", page)]


def test_report_is_a_real_repair(repaired):
    _, report, _ = repaired
    # the fixture is only useful if the repair did something to show
    print(report["accuracy"], len(report["changes"]), len(report["steps"]))
    assert report["changes"] and report["steps"] and report["top_neurons"]
    assert report["accuracy"]["validation"]["quantized"] < report["accuracy"]["validation"]["float"]


def test_html_has_the_per_layer_table_the_cli_computed(repaired):
    _, report, page = repaired
    costs = report["layer_costs"]
    assert costs["n_images"] == 40 and "Which layer causes the drop" in page
    first = costs["layers"][0]
    got = cells(page)
    assert got[got.index(first["layer"], got.index("blame share")) + 1] == \
        f"{first['float_accuracy']:.2f}"


def test_html_holds_the_numbers(repaired):
    _, report, page = repaired
    table = cells(page)
    for split in SPLITS:
        for model in MODELS:
            assert f"{report['accuracy'][split][model]:.2f}" in table, (split, model)
        assert str(report["sizes"][split]) in table
    for neuron, score in report["top_neurons"]:  # one cell per neuron, titled with its score
        assert f"{neuron}: {score:.4g}</title>" in page
    for layer, scores in report["blame"].items():
        assert f">{layer}<" in page and len(scores) == page.count(f"<title>{layer}[")
    for change in report["changes"]:
        row = table.index(change["neuron"])
        assert table[row + 1:row + 5] == [str(change["weights_changed"]), str(change["delta_l1"]),
                                          str(change["delta_max"]), f"{change['bias_delta']:+d}"]
    for model, values in report["per_class"].items():
        for value in values:
            assert (f"{value:.2f}" if math.isfinite(value) else "n/a") in table, model
    assert f"{sum(s['n_lps'] for s in report['steps'])} LPs solved" in page
    times = [1000 * t for s in report["steps"] for t in s["lp_seconds"]]
    assert f"{max(times):.1f}" in table and f"{np.median(times):.1f}" in table
    for rows, cols in {tuple(x) for s in report["steps"] for x in s["lp_sizes"]}:
        assert f"{rows} × {cols}" in page
    decisions = [c for c in table if c in ("kept", "rejected")]
    assert decisions == ["kept" if s["accepted"] else "rejected" for s in report["steps"]]
    repair = {f"{part}.{key}": value for part, values in report["repair_config"].items()
              if isinstance(values, dict) for key, value in values.items()}
    for values in (report["quant_config"], repair, report["versions"]):
        for key, value in values.items():
            assert key in table, key
            assert (json.dumps(value) if isinstance(value, (list, dict)) else str(value)) in \
                [c.replace("&quot;", '"') for c in table], key


def test_html_is_self_contained(repaired):
    _, _, page = repaired
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page
    for pattern in (r"<script", r"<link", r"<img", r"<iframe", r"@import", r"url\(",
                    r"\b(src|href)\s*="):
        assert not re.search(pattern, page, re.IGNORECASE), pattern
    assert page.count("<svg") == 4  # accuracy, ranking, per class, solve times


def synthetic_report(**overrides) -> RepairReport:
    fields = dict(
        model="m", quant_config={"weight_bits": 4, "act_bits": 8}, repair_config={"metric": "x"},
        seed=0, sizes={"repair": 10, "validation": 10, "test": 10},
        accuracy={s: {"float": 90.0, "quantized": 80.0, "repaired": 85.0} for s in SPLITS},
        top_neurons=[("fc[0]", 0.5)], changes=[], steps=[], timings={"total": 1.0},
        versions={"qnnrepair": "0"}, per_class={})
    return RepairReport(**{**fields, **overrides})


def test_every_text_is_escaped():
    evil = '<script>alert("x")</script>'
    report = synthetic_report(
        model=evil, quant_config={"weight_bits": evil, "act_bits": 8, "overrides": [[evil, 2]]},
        repair_config={"metric": evil}, top_neurons=[(f"{evil}[3]", 1.0)],
        changes=[{"neuron": f"{evil}[3]", "weights_changed": 1, "delta_l1": 1, "delta_max": 1,
                  "bias_delta": 0, "status": evil, "solve_seconds": 0.1}],
        steps=[{"neurons": [f"{evil}[3]"], "validation_accuracy": 85.0, "accepted": True,
                "n_lps": 1, "lp_seconds": [0.1], "lp_sizes": [[3, 4]], "seconds": 0.2}],
        versions={evil: evil}, timings={evil: 1.0})
    page = render_html(report)
    assert "<script" not in page and "alert(&quot;x&quot;)" in page


def test_nothing_to_repair_and_missing_values():
    report = synthetic_report(
        accuracy={s: {"float": 90.0, "quantized": 90.0, "repaired": 90.0} for s in SPLITS},
        per_class={m: [90.0, float("nan")] for m in MODELS})
    page = render_html(report)
    assert "Nothing to repair" in page and "unchanged" in page
    assert "No neuron was changed" in page and "No LP was solved" in page
    assert "n/a" in cells(page) and "nan" not in cells(page)


def test_per_layer_table_is_shown_when_the_report_has_it():
    layer = {"layer": "conv1", "blame_share": 0.625, "float_accuracy": 88.0, "float_kl": 0.01,
             "quantized_accuracy": 86.5, "quantized_kl": 0.02, "recovers": 3.0}
    costs = {"n_images": 50, "float_accuracy": 90.0, "quantized_accuracy": 85.0,
             "quantized_kl": 0.05, "layers": [layer, {**layer, "layer": "fc",
                                                     "blame_share": None}]}
    without = render_html(synthetic_report())
    page = render_html(synthetic_report(layer_costs=costs))
    assert "Which layer causes the drop" not in without
    assert "Which layer causes the drop" in page and "50 validation images" in page
    got = cells(page)
    # alone float 88.00 gives back +3.00 on the quantized 85.00; the blame share; none: n/a
    assert ["conv1", "88.00", "+3.00", "0.0100", "86.50", "0.0200", "0.625"] == \
        got[got.index("conv1"):got.index("conv1") + 7]
    assert got[got.index("fc") + 6] == "n/a"


def test_the_steps_state_the_acceptance_rule():
    steps = [{"neurons": ["conv[3]"], "validation_accuracy": 85.0, "accepted": True,
              "n_lps": 1, "lp_seconds": [0.1], "lp_sizes": [[3, 4]], "seconds": 0.2}]
    rule = {"criterion": "kl", "min_gain": 0.01, "min_z": 2.0}
    page = render_html(synthetic_report(repair_config={"acceptance": rule}, steps=steps))
    assert "by at least 1% and by at least 2 standard errors of the per-image drop" in page
    page = render_html(synthetic_report(repair_config={"acceptance": {**rule, "min_z": 0.0}},
                                        steps=steps))
    assert "by at least 1% and validation accuracy" in page and "standard errors" not in page


def test_report_html_folder_is_checked_before_the_repair(tmp_path, capsys, monkeypatch):
    write_tiny_task(tmp_path, n=120)
    import qnnrepair.pipeline

    def never(*args, **kwargs):
        raise AssertionError("the repair ran before the output folder was checked")

    monkeypatch.setattr(qnnrepair.pipeline, "run_repair", never)
    code = main(["--no-progress", "repair", "--model", MODEL, "--weights",
                 str(tmp_path / "weights.pt"), "--data", str(tmp_path / "data.npz"),
                 "--n-repair", "40", "--n-validation", "40", "--output",
                 str(tmp_path / "out.qnn"), "--report-html", str(tmp_path / "no" / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("qnnrepair: error:") and "does not exist" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "weights.pt"]


# ---------------------------------------------------------------- in a real browser

def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
               page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_renders_in_headless_chromium(repaired, tmp_path):
    write = os.environ.get("QNNREPAIR_WRITE_SCREENSHOT") == "1"
    if not CHROMIUM.exists():
        (pytest.fail if write else pytest.skip)(
            f"needs {CHROMIUM} (apt-get install chromium); .ci/run installs it")
    folder, report, _ = repaired
    page = folder / "report.html"

    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    text = dom.stdout
    assert "<h1>qnnrepair report:" in text and text.count("<svg") == 4
    for split in SPLITS:
        for model in MODELS:
            assert f">{report['accuracy'][split][model]:.2f}<" in text, (split, model)

    shot = tmp_path / "shot.png"
    result = chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}",
                      f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert "Uncaught" not in result.stderr
    assert png_size(shot) == WINDOW

    from PIL import Image

    with Image.open(shot) as image:
        colors = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    # the plots were drawn: the bar colours of the three models are on the screen
    for hex_color in ("#8c8c8c", "#e07b39", "#2f6fb0"):
        rgb = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colors, hex_color
    if write:
        shutil.copyfile(shot, SCREENSHOT)
