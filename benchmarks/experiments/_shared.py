"""What every experiment script shares: the zoo workloads, the quantization setting per model,
result files (resumable JSON rows, a Markdown table, a PNG plot) under
benchmarks/results/experiments/.

R is drawn from CIFAR-10 train30k, V is 1,000 images drawn from the test file and T the other
9,000 (evaluated after every decision has been made). Each model is quantized at the setting in
SETTINGS: per-channel weights, first and last layer at 8 bits, the one with a clear accuracy
drop for that model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEFAULT_SHARED, RESULTS, Clock, Rows, command, machine, workload  # noqa: E402

from qnnrepair.data.splits import SPLIT_NAMES  # noqa: E402
from qnnrepair.evaluation import accuracy  # noqa: E402
from qnnrepair.quantization import QuantConfig, QuantizedModel, quantize  # noqa: E402

OUT = RESULTS / "experiments"
SPLITS = SPLIT_NAMES
SETTINGS = {"conv3": "w3a8", "conv5": "w3a8", "vgg": "w3a8", "mobilenetv2": "w4a8",
            "resnet20": "w3a8", "resnet32": "w3a8", "resnet44": "w3a8", "resnet56": "w3a8"}

__all__ = ["DEFAULT_SHARED", "OUT", "SETTINGS", "SPLITS", "Clock", "Rows", "accuracies",
           "arguments", "commands", "header", "meta", "quantized", "rerender",
           "results", "workload", "write"]


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every experiment has: --shared, --fresh, --render."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--fresh", action="store_true", help="ignore earlier rows")
    parser.add_argument("--render", action="store_true", help="only rewrite md/png from JSON")
    return parser


def rerender(name: str, render) -> None:
    """--render: the table and plot again from the saved rows."""
    saved = json.loads((OUT / f"{name}.json").read_text())
    render(saved["rows"], saved["meta"])


def results(name: str, fresh: bool) -> Rows:
    return Rows(OUT / f"{name}.json", fresh)


def meta(**extra) -> dict:
    # Two threads on the 2-core machine; OMP_NUM_THREADS=1 when two experiments share it.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    return {"command": command(), "machine": machine(), **extra}


def quantized(work, model: str, images: torch.Tensor, setting: str | None = None,
              **config) -> QuantizedModel:
    return quantize(work.model, QuantConfig.from_setting(setting or SETTINGS[model], **config),
                    images, model_spec=model, seed=work.seed)


def accuracies(model, work, images: dict | None = None) -> dict[str, float]:
    """Accuracy on R, V and T (or on the (images, labels) pairs given per split)."""
    pairs = images or {s: (work.images(s), work.labels(s)) for s in SPLITS}
    return {s: accuracy(model, x, y) for s, (x, y) in pairs.items()}


def write(name: str, markdown: str, plot=None) -> None:
    """The Markdown table, and the plot when matplotlib (the `bench` extra) is there."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(markdown)
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plot(plt)
        fig.tight_layout()
        fig.savefig(OUT / f"{name}.png", dpi=110, format="png")
        plt.close(fig)


def header(title: str, m: dict, what: str) -> list[str]:
    return [f"# {title}", "", what, "", f"Command: `{m['command']}`  ",
            f"Machine: {m['machine']}", ""]


def commands(rows: list[dict], earlier: str, with_revisions: bool = False) -> list[str]:
    """The commands that made the rows (run in benchmarks/experiments/), in order, each with
    the revisions it ran at when `with_revisions` (else a table column has them); `earlier`
    says what made the rows from before each row kept its command."""
    seen = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    before = any(not r.get("command") for r in rows)

    def line(c: str) -> str:
        revisions = dict.fromkeys(r.get("revision", "?") for r in rows if r.get("command") == c)
        return f"- `{c}`" + (f" ({', '.join(revisions)})" if with_revisions else "")

    intro = "" if with_revisions else "; each row's revision is in its last column"
    return ([f"Commands (in benchmarks/experiments/{intro}):"] + [line(c) for c in seen]
            + ([f"- {earlier}"] if before else []) + [""])
