"""The bench targets, checked on the rows of bench JSON files (one file or several seeds).

    python benchmarks/bench_targets.py benchmarks/results/bench-resnet20-s*.json \
        benchmarks/results/bench-resnet32-s0.json [--output benchmarks/results/bench-targets.md]

Per (model, setting), over the seeds present: test accuracy of qnnrepair's default against
AdaRound and QDrop (mean over seeds, and in how many seeds it is ahead), its median CPU
seconds and their ratio to AdaRound's, and AdaRound + qnnrepair against AdaRound (QDrop +
qnnrepair against QDrop) seed by seed. Accuracy in %, on T; the choices inside every method
saw only R and V.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, median


def rows_of(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        seed = data["meta"]["key"]["seed"]
        rows += [{**r, "seed": r.get("seed", seed)} for r in data["rows"]]
    return rows


def cells(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[int, dict]]]:
    """(model, setting) -> method -> seed -> row."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["model"], r["setting"]), {}).setdefault(r["method"], {})[r["seed"]] = r
    return out


def test(row: dict) -> float:
    return row["result"]["test"]


def check(rows: list[dict]) -> list[str]:
    lines = ["| model, setting | seeds | float | AdaRound | QDrop | qnnrepair | ahead of AdaRound "
             "(seeds) | qnnrepair CPU s | CPU qnnrepair / AdaRound | "
             "AdaRound+qnnrepair minus AdaRound, per seed | "
             "QDrop+qnnrepair minus QDrop, per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, setting), by_method in cells(rows).items():
        ada, ours = by_method.get("adaround", {}), by_method.get("qnnrepair", {})
        seeds = sorted(set(ada) & set(ours))
        if not seeds:
            continue
        stacked = by_method.get("adaround+qnnrepair", {})
        qdrop = by_method.get("qdrop", {})
        fl = mean(ours[s]["float"]["test"] for s in seeds)
        ahead = sum(test(ours[s]) > test(ada[s]) for s in seeds)
        cpu = median(ours[s]["cpu_s"] for s in seeds)
        ratio = cpu / median(ada[s]["cpu_s"] for s in seeds)
        diffs = ", ".join(f"{test(stacked[s]) - test(ada[s]):+.2f}" for s in seeds
                          if s in stacked)
        on_qdrop = by_method.get("qdrop+qnnrepair", {})
        qdiffs = ", ".join(f"{test(on_qdrop[s]) - test(qdrop[s]):+.2f}" for s in seeds
                           if s in on_qdrop and s in qdrop)
        q = f"{mean(test(qdrop[s]) for s in seeds if s in qdrop):.2f}" if qdrop else "-"
        lines.append(
            f"| {model} {setting.upper()} | {', '.join(map(str, seeds))} | {fl:.2f} | "
            f"{mean(test(ada[s]) for s in seeds):.2f} | {q} | "
            f"{mean(test(ours[s]) for s in seeds):.2f} | {ahead} of {len(seeds)} | "
            f"{cpu:.0f} | {ratio:.2f} | {diffs or '-'} | {qdiffs or '-'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    text = "\n".join(check(rows_of(args.json))) + "\n"
    print(text, end="")
    if args.output:
        args.output.write_text(
            "# Bench targets\n\n" + __doc__.split("\n\n", 2)[2].strip() + "\n\n"
            "Command: `python benchmarks/bench_targets.py "
            + " ".join(str(p) for p in args.json) + f" --output {args.output}`\n\n" + text)


if __name__ == "__main__":
    main()
