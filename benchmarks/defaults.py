"""Choosing the repair default on validation: candidate configurations side by side.

    python benchmarks/defaults.py [--model resnet20] [--settings w3a8 w4a4] [--seeds 0]
        [--configs NAME ...] [--name defaults] [--merge NAME ...] [--fresh]

Each configuration is a complete setting of what the default choice varies (CONFIGS: the
same repair whatever the default is later); every one runs on the same
workload (R = 1,000 CIFAR-10 training images, also the calibration set; V = 1,000 images drawn
from the test file; T = the other 9,000), and the table gives V accuracy and KL to the float
model (what a choice may look at) beside T accuracy (reported only), LPs and CPU seconds.
Writes benchmarks/results/<name>.md and .json (resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, median

from common import DEFAULT_SHARED, RESULTS, Clock, Rows, command, machine, workload

from qnnrepair.data.splits import SPLIT_NAMES
from qnnrepair.evaluation import accuracy
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset

# Every setting a change of the default has touched, spelled out, so that a configuration
# names the same repair whatever the default is later (the others are the preset's). The
# default as it is now:
DEFAULT = {"metric": "gradient", "schedule": "geometric", "growth": 8, "criterion": "kl",
           "min_gain": 0.01, "min_z": 1.0, "hidden_rows": 64, "summary_pixels": 2**20,
           "weight_domain": "rounding"}
# The default before the choice of rows and growth (defaults-cost.md chose them on validation).
BEFORE_ROWS = {**DEFAULT, "growth": 4, "min_z": 0.0, "hidden_rows": 256}
CONFIGS = {
    "gradient-geometric-kl-all": BEFORE_ROWS,
    "gradient-geometric-kl-all-rows128": {**BEFORE_ROWS, "hidden_rows": 128},
    "gradient-geometric-kl-all-rows64": {**BEFORE_ROWS, "hidden_rows": 64},
    "gradient-geometric-kl-all-rows64-growth8": {**BEFORE_ROWS, "hidden_rows": 64, "growth": 8},
    "gradient-geometric-kl-all-rows64-growth8-images512": {
        **BEFORE_ROWS, "hidden_rows": 64, "growth": 8, "summary_pixels": 2**19},
    "default": DEFAULT,
    "default-grid": {**DEFAULT, "weight_domain": "grid"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--settings", nargs="+", default=["w3a8", "w4a4"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--name", default="defaults",
                        help="file stem under benchmarks/results/ (default defaults)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="NAME",
                        help="first take the rows of these result files (a run side by side)")
    args = parser.parse_args()
    out = RESULTS / args.name
    rows = Rows(out.with_suffix(".json"), args.fresh)
    meta = {"command": command(), "machine": machine(),
            "merged": {} if args.fresh else earlier_merges(out.with_suffix(".json"))}
    for name in args.merge:
        merged = json.loads((RESULTS / f"{name}.json").read_text())
        meta["merged"][name] = merged["meta"]["command"]
        for row in merged["rows"]:
            if not rows.has(**{k: row[k] for k in ("model", "setting", "seed", "config")}):
                rows.add(row, meta)
    for seed in args.seeds:
        work = workload(args.model, args.shared, seed=seed)
        images = {s: (work.images(s), work.labels(s)) for s in SPLIT_NAMES}
        for setting in args.settings:
            qmodel = quantize(work.model, QuantConfig.from_setting(setting),
                              work.images("repair"), model_spec=args.model, seed=seed)
            for name in args.configs:
                key = {"model": args.model, "setting": setting, "seed": seed, "config": name}
                if rows.has(**key):
                    continue
                with Clock() as clock:
                    repairer = Repairer(preset("default", seed=seed, **CONFIGS[name])).fit(
                        qmodel, *images["repair"], *images["validation"])
                row = {**key, "overrides": CONFIGS[name], "wall_s": clock.wall,
                       "cpu_s": clock.cpu, "lps": sum(s.n_lps for s in repairer.steps_),
                       "neurons": len(repairer.changes_), "steps": len(repairer.steps_),
                       "kl": repairer.validation_divergence_,
                       "accuracy": {s: {"quantized": accuracy(qmodel.model, *xy),
                                        "repaired": accuracy(repairer.repaired_.model, *xy)}
                                    for s, xy in images.items()},
                       "float": {s: accuracy(qmodel.float_model, *xy)
                                 for s, xy in images.items()}}
                rows.add(row, meta)
                print(f"{setting} seed {seed} {name}: V {row['accuracy']['validation']}"
                      f" T {row['accuracy']['test']} {clock.cpu:.0f} CPU s", flush=True)
    out.with_suffix(".md").write_text(render(rows.rows, meta))


def earlier_merges(path: Path) -> dict[str, str]:
    """The merged files (name: command) recorded in an earlier run's results, so that a resumed
    run still names where its merged rows came from."""
    return json.loads(path.read_text())["meta"].get("merged", {}) if path.exists() else {}


def render(rows: list[dict], meta: dict) -> str:
    out = ["# Choosing the default on validation", "",
           "R = 1,000 CIFAR-10 training images (also the calibration set), V = 1,000 images "
           "drawn from the test file, T = the other 9,000. V columns decide; T is reported. "
           "CPU seconds include the LP worker processes.", "",
           f"Command: `{meta['command']}`  ",
           *(f"Rows merged from {name}.json: `{cmd}`  "
             for name, cmd in meta.get("merged", {}).items()),
           f"Machine: {meta['machine']}", "",
           "| model, setting, seed | configuration | V acc | V KL | T acc | R acc | neurons "
           "changed | LPs | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r["accuracy"]
        first = f"{r['model']} {r['setting'].upper()} seed {r['seed']}"
        quant = (f"| {first} | quantized (float V {r['float']['validation']:.2f}, "
                 f"T {r['float']['test']:.2f}) | {acc['validation']['quantized']:.2f} | "
                 f"{r['kl']['quantized']:.4f} | {acc['test']['quantized']:.2f} | "
                 f"{acc['repair']['quantized']:.2f} | | | |")
        if quant not in out:
            out.append(quant)
        out.append(f"| {first} | {r['config']} | {acc['validation']['repaired']:.2f} | "
                   f"{r['kl']['repaired']:.4f} | {acc['test']['repaired']:.2f} | "
                   f"{acc['repair']['repaired']:.2f} | {r['neurons']} | {r['lps']} | "
                   f"{r['cpu_s']:.0f} |")
    return "\n".join(out + summary(rows)) + "\n"


def summary(rows: list[dict]) -> list[str]:
    """Per configuration over the cells where every configuration ran: means of V accuracy,
    V KL and T accuracy, and the median CPU seconds (what a choice of default weighs)."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["setting"], r["seed"]), {})[r["config"]] = r
    complete = [c for c in cells.values() if len(c) == len(configs)]
    if len(configs) < 2 or len(complete) < 2:
        return []
    out = ["", f"Over the {len(complete)} cells where all {len(configs)} configurations ran "
           "(means; median CPU s):", "",
           "| configuration | V acc | V KL | T acc | CPU s |", "|---|---|---|---|---|"]
    for name in configs:
        got = [c[name] for c in complete]
        out.append(f"| {name} | {mean(r['accuracy']['validation']['repaired'] for r in got):.2f}"
                   f" | {mean(r['kl']['repaired'] for r in got):.4f} | "
                   f"{mean(r['accuracy']['test']['repaired'] for r in got):.2f} | "
                   f"{median(r['cpu_s'] for r in got):.0f} |")
    return out


if __name__ == "__main__":
    main()
