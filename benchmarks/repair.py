"""Repair benchmark: ResNet-20 at low bit widths, every metric, default vs paper preset,
with empirical bias correction as the cheap reference.

    python benchmarks/repair.py                       # full run, resumes if interrupted
    python benchmarks/repair.py --settings w4a4 --metrics ochiai --presets default
    python benchmarks/repair.py --name repair-ablation --presets default --set layers=all

R = 1,000 CIFAR-10 training images (also the calibration set), V = 1,000 other training
images, T = the 10,000 test images. T is evaluated after each method has finished; nothing is
chosen on it. Writes benchmarks/results/repair.json and repair.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_SHARED, RESULTS, Clock, Rows, command, machine, workload

from qnnrepair.baselines import get_baseline
from qnnrepair.data.splits import SPLIT_NAMES
from qnnrepair.evaluation import accuracy
from qnnrepair.localization import METRICS
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset

SPLITS = SPLIT_NAMES


def accuracies(model, work) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in SPLITS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--settings", nargs="+", default=["w4a8", "w3a8", "w4a4"])
    parser.add_argument("--metrics", nargs="+", default=sorted(METRICS))
    parser.add_argument("--presets", nargs="+", default=["default", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override repair settings (an ablation); rows are labelled with them")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier rows")
    parser.add_argument("--name", default="repair", help="results file stem")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the Markdown table from the JSON rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.render:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        (RESULTS / f"{args.name}.md").write_text(render(saved["rows"], saved["meta"]))
        return

    work = workload(args.model, args.shared, seed=args.seed)
    rows = Rows(RESULTS / f"{args.name}.json", args.fresh)
    meta = {"command": command(), "machine": machine(), "model": args.model,
            "sizes": {s: len(work.labels(s)) for s in SPLITS}, "seed": args.seed,
            "name": args.name}
    overrides = parse_overrides(args.set)
    float_acc = accuracies(work.model, work)
    for setting in args.settings:
        config = QuantConfig.from_setting(setting)
        with Clock() as clock:
            qmodel = quantize(work.model, config, work.images("repair"),
                              model_spec=args.model, seed=args.seed)
        quant_acc = None
        for method in ["rtn", "bias_correction"]:
            if rows.has(setting=setting, method=method):
                continue
            with Clock() as clock:
                fixed = get_baseline(method)(qmodel, work.images("repair"), seed=args.seed)
            quant_acc = quant_acc or accuracies(qmodel.model, work)
            rows.add({"setting": setting, "method": method, "metric": "", "float": float_acc,
                      "quantized": quant_acc, "result": accuracies(fixed.model, work),
                      "wall_s": clock.wall, "cpu_s": clock.cpu}, meta)
            print(f"{setting} {method}: test {rows.rows[-1]['result']['test']:.2f}%", flush=True)
        quant_acc = quant_acc or rows.get(setting=setting, method="rtn")["quantized"]
        for base in args.presets:
            name = base + "".join(f"[{k}={v}]" for k, v in overrides.items())
            for metric in args.metrics:
                if rows.has(setting=setting, method=name, metric=metric):
                    continue
                config_r = preset(base, **{"metric": metric, "seed": args.seed, **overrides})
                with Clock() as clock:
                    repairer = Repairer(config_r).fit(
                        qmodel, work.images("repair"), work.labels("repair"),
                        work.images("validation"), work.labels("validation"))
                rows.add({"setting": setting, "method": name, "metric": metric,
                          "float": float_acc, "quantized": quant_acc,
                          "result": accuracies(repairer.repaired_.model, work),
                          "wall_s": clock.wall, "cpu_s": clock.cpu,
                          "neurons_changed": len(repairer.changes_),
                          "lps": sum(s.n_lps for s in repairer.steps_)}, meta)
                r = rows.rows[-1]
                print(f"{setting} {name} {metric}: test {quant_acc['test']:.2f} -> "
                      f"{r['result']['test']:.2f}% ({clock.wall:.0f}s)", flush=True)
    (RESULTS / f"{args.name}.md").write_text(render(rows.rows, meta))


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE pairs as RepairConfig fields, VALUE read as JSON where it parses (numbers,
    true/false/null) and as a string otherwise."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def render(rows: list[dict], meta: dict) -> str:
    out = [f"# Repair benchmark: CIFAR-10 {meta['model']}", "",
           f"Rows are kept in {meta.get('name', 'repair')}.json across resumable invocations "
           f"(each run skips the rows it finds); the last one was `{meta['command']}`; "
           "`python benchmarks/repair.py` "
           "runs the default matrix.  ", f"Machine: {meta['machine']}  ",
           f"Splits: repair {meta['sizes']['repair']} training images (also the calibration "
           f"set), validation {meta['sizes']['validation']} other training images, test "
           f"{meta['sizes']['test']} test images; seed {meta['seed']}. Per-channel weights, "
           "first and last layer at 8 bits, min-max activation ranges. Accuracies in %; "
           "'recovered' is (method - quantized) / (float - quantized) on the test set.", ""]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == setting]
        f, q = sub[0]["float"], sub[0]["quantized"]
        out += [f"## {setting.upper()}", "",
                f"Float: repair {f['repair']:.2f}, validation {f['validation']:.2f}, test "
                f"{f['test']:.2f}. Quantized (RTN): repair {q['repair']:.2f}, validation "
                f"{q['validation']:.2f}, test {q['test']:.2f}.", "",
                "| method | metric | repair | validation | test | recovered | neurons | LPs "
                "| wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sub:
            res, drop = r["result"], f["test"] - q["test"]
            rec = (res["test"] - q["test"]) / drop * 100 if drop > 0 else float("nan")
            out.append(f"| {r['method']} | {r['metric'] or '-'} | {res['repair']:.2f} | "
                       f"{res['validation']:.2f} | {res['test']:.2f} | {rec:.0f} % | "
                       f"{r.get('neurons_changed', '-')} | {r.get('lps', '-')} | "
                       f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
