"""E2 (the seed's experiment 2): is any suspiciousness metric reliably better than Random at
the same number of repaired neurons?

    python benchmarks/experiments/e2_metrics.py [--models conv3 conv5 resnet20]
        [--neurons 1 5 10 50] [--random-seeds 3] [--fresh | --render]

For each model, metric and N: the top-N neurons of that metric's ranking (hidden layers, as the
default preset repairs) are repaired with the default LPs and no validation guard, so the
ranking alone decides what changes. Random is run with several seeds to show its spread.
"""

from __future__ import annotations

import numpy as np
from _shared import (
    SETTINGS,
    Clock,
    accuracies,
    arguments,
    header,
    localize,
    meta,
    quantized,
    rerender,
    results,
    workload,
    write,
)

from qnnrepair.localization import METRICS
from qnnrepair.repair import Repairer, preset

NAME = "e2_metrics"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=["conv3", "conv5", "resnet20"])
    parser.add_argument("--neurons", nargs="+", type=int, default=[1, 5, 10, 50])
    parser.add_argument("--random-seeds", type=int, default=3)
    args = parser.parse_args()
    if args.render:
        return rerender(NAME, render)
    m = meta(neurons=args.neurons)
    rows = results(NAME, args.fresh)
    runs = [(metric, 0) for metric in sorted(METRICS) if metric != "random"] + \
        [("random", seed) for seed in range(args.random_seeds)]
    for model in args.models:
        work = workload(model, args.shared)
        qmodel = quantized(work, model, work.images("repair"))
        before = accuracies(qmodel.model, work)
        repairer = Repairer(preset("default"))
        layers = repairer.repair_layers(qmodel)
        for metric, seed in runs:
            todo = [n for n in args.neurons
                    if not rows.has(model=model, metric=metric, seed=seed, n=n)]
            if not todo:
                continue
            ranking = localize(qmodel, layers, work.images("repair"), work.labels("repair"),
                               metric, seed).ranking_
            for n in todo:
                with Clock() as clock:
                    repaired, changes, step = repairer.repair_neurons(
                        qmodel, ranking[:n], work.images("repair"), work.labels("repair"))
                rows.add({"model": model, "setting": SETTINGS[model], "metric": metric,
                          "seed": seed, "n": n, "quantized": before,
                          "repaired": accuracies(repaired.model, work),
                          "neurons_changed": len(changes), "lps": step.n_lps,
                          "lp_s": float(np.sum(step.lp_seconds)), "wall_s": clock.wall}, m)
                print(f"{model} {metric}/{seed} top-{n}: test {before['test']:.2f} -> "
                      f"{rows.rows[-1]['repaired']['test']:.2f}", flush=True)
    render(rows.rows, m)


def gains(rows: list[dict], model: str, metric: str, n: int, split: str = "test") -> list[float]:
    return [r["repaired"][split] - r["quantized"][split] for r in rows
            if r["model"] == model and r["metric"] == metric and r["n"] == n]


def render(rows: list[dict], m: dict) -> None:
    out = header("E2: suspiciousness metrics against Random", m,
                 "Test-accuracy gain in points (repaired top-N minus quantized) per metric; "
                 "Random as mean [min, max] over its seeds. R = 1,000 training images (also "
                 "the calibration set), V = 1,000 others, T = 10,000 test images. Per-channel "
                 "weights, first and last layer at 8 bits; no validation guard, so a ranking "
                 "that picks harmful neurons shows as a loss.")
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        ns = sorted({r["n"] for r in sub})
        out += [f"## {model} ({sub[0]['setting'].upper()}, quantized test "
                f"{sub[0]['quantized']['test']:.2f} %)", "",
                "| metric | " + " | ".join(f"top-{n}" for n in ns) + " | beats Random's max |",
                "|---|" + "---|" * (len(ns) + 1)]
        for metric in metrics:
            cells, wins = [], 0
            for n in ns:
                g, rnd = gains(sub, model, metric, n), gains(sub, model, "random", n)
                if not g:
                    cells.append("-")
                    continue
                cells.append(f"{np.mean(g):+.2f}" + (f" [{min(g):+.2f}, {max(g):+.2f}]"
                                                     if len(g) > 1 else ""))
                wins += bool(rnd) and metric != "random" and np.mean(g) > max(rnd)
            verdict = "-" if metric == "random" else f"{wins} of {len(ns)}"
            out.append(f"| {metric} | " + " | ".join(cells) + f" | {verdict} |")
        out.append("")

    def plot(plt):
        models = list(dict.fromkeys(r["model"] for r in rows))
        fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            sub = [r for r in rows if r["model"] == model]
            ns = sorted({r["n"] for r in sub})
            for metric in metrics:
                ys = [np.mean(gains(sub, model, metric, n) or [np.nan]) for n in ns]
                style = dict(color="k", lw=2.5, ls="--") if metric == "random" else {}
                ax.plot(ns, ys, marker="o", label=metric, **style)
            ax.set_xscale("log")
            ax.set_xlabel("repaired neurons N (log)")
            ax.set_ylabel("test accuracy gain (points)")
            ax.set_title(f"{model} {sub[0]['setting'].upper()}")
        axes[0][0].legend(fontsize=7)
        return fig

    write(NAME, "\n".join(out) + "\n", plot if rows else None)


if __name__ == "__main__":
    main()
