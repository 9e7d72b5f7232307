"""qnnrepair against each baseline of a bench run, seed by seed (one file or several seeds).

    python benchmarks/bench_targets.py benchmarks/results/bench.json \
        [--output benchmarks/results/bench-targets.md]

Per (model, setting) and baseline X present in the rows, over the seeds both ran: the mean
test accuracy of X and of qnnrepair's default, their paired difference (qnnrepair minus X on
the same seed, hence the same R, V and T) as its mean and its value per seed, in how many seeds
qnnrepair is ahead, the ratio of qnnrepair's median CPU seconds to X's, and, where the bench
stacked qnnrepair on X, X + qnnrepair minus X per seed. Accuracy in %, on T; the choices inside
every method saw only R and V. Below the table: in how many cells qnnrepair's mean is ahead of
each baseline's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, median

# the rows that are not a baseline to compare against
NOT_BASELINES = {"float", "qnnrepair", "paper"}


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


def baselines(by_method: dict[str, dict]) -> list[str]:
    """The methods qnnrepair is compared with, in table order: not stacked rows, not itself."""
    return [m for m in by_method if m not in NOT_BASELINES and "+" not in m]


def check(rows: list[dict]) -> list[str]:
    lines = ["| model, setting | baseline X | seeds | X | qnnrepair | qnnrepair minus X: mean "
             "(per seed) | ahead (seeds) | CPU qnnrepair / X | X+qnnrepair minus X, per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    ahead_cells: dict[str, list[bool]] = {}
    for (model, setting), by_method in cells(rows).items():
        ours = by_method.get("qnnrepair", {})
        for name in baselines(by_method):
            theirs = by_method[name]
            seeds = sorted(set(theirs) & set(ours))
            if not seeds:
                continue
            diffs = [test(ours[s]) - test(theirs[s]) for s in seeds]
            stacked = by_method.get(f"{name}+qnnrepair", {})
            on_top = ", ".join(f"{test(stacked[s]) - test(theirs[s]):+.2f}" for s in seeds
                               if s in stacked)
            cpu = median(theirs[s]["cpu_s"] for s in seeds)
            ratio = f"{median(ours[s]['cpu_s'] for s in seeds) / cpu:.2f}" if cpu > 1 else "-"
            ahead_cells.setdefault(name, []).append(mean(diffs) > 0)
            lines.append(
                f"| {model} {setting.upper()} | {name} | {', '.join(map(str, seeds))} | "
                f"{mean(test(theirs[s]) for s in seeds):.2f} | "
                f"{mean(test(ours[s]) for s in seeds):.2f} | {mean(diffs):+.2f} "
                f"({', '.join(f'{d:+.2f}' for d in diffs)}) | "
                f"{sum(d > 0 for d in diffs)} of {len(seeds)} | {ratio} | {on_top or '-'} |")
    lines += ["", "qnnrepair's mean ahead of the baseline's, in cells: " + "; ".join(
        f"{name} {sum(ahead)} of {len(ahead)}" for name, ahead in ahead_cells.items()) + "."]
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
            "# qnnrepair against each baseline\n\n" + __doc__.split("\n\n", 2)[2].strip()
            + "\n\nCommand: `python benchmarks/bench_targets.py "
            + " ".join(str(p) for p in args.json) + f" --output {args.output}`\n\n" + text)


if __name__ == "__main__":
    main()
