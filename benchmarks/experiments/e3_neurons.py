"""E3 (the seed's experiment 3): how accuracy gain and LP solve time grow with the number of
repaired neurons, from 1 to 10 and beyond.

    python benchmarks/experiments/e3_neurons.py [--models resnet20 conv3]
        [--neurons 1 2 ... 10 16 32 64 128 256 0] [--fresh | --render]

N = 0 stands for every neuron of the repaired layers. The top-N neurons of the default ranking
(gradient blame, hidden layers) are repaired with no validation guard; every LP is solved
afresh, so the solve time is that of N neurons alone.
"""

from __future__ import annotations

import numpy as np
from _shared import (
    SETTINGS,
    Clock,
    accuracies,
    arguments,
    header,
    meta,
    quantized,
    rerender,
    results,
    workload,
    write,
)

from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.engine import fit_localizer

NAME = "e3_neurons"
NEURONS = [*range(1, 11), 16, 32, 64, 128, 256, 0]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20", "conv3"])
    parser.add_argument("--neurons", nargs="+", type=int, default=NEURONS)
    args = parser.parse_args()
    if args.render:
        return rerender(NAME, render)
    m = meta()
    rows = results(NAME, args.fresh)
    for model in args.models:
        work = workload(model, args.shared)
        qmodel = quantized(work, model, work.images("repair"))
        before = accuracies(qmodel.model, work)
        repairer = Repairer(preset("default"))
        ranking = fit_localizer(qmodel, work.images("repair"), work.labels("repair"),
                                repairer.config).ranking_
        for n in args.neurons:
            n = n or len(ranking)
            if rows.has(model=model, n=n) or n > len(ranking):
                continue
            with Clock() as clock:
                repaired, changes, step = repairer.repair_neurons(
                    qmodel, ranking[:n], work.images("repair"), work.labels("repair"))
            rows.add({"model": model, "setting": SETTINGS[model], "n": n,
                      "all": n == len(ranking), "quantized": before,
                      "repaired": accuracies(repaired.model, work),
                      "neurons_changed": len(changes), "lps": step.n_lps,
                      "lp_s": float(np.sum(step.lp_seconds)),
                      "lp_max_s": float(np.max(step.lp_seconds, initial=0.0)),
                      "wall_s": clock.wall, "cpu_s": clock.cpu}, m)
            print(f"{model} top-{n}: test {before['test']:.2f} -> "
                  f"{rows.rows[-1]['repaired']['test']:.2f} ({clock.wall:.1f}s)", flush=True)
    render(rows.rows, m)


def render(rows: list[dict], m: dict) -> None:
    out = header("E3: repaired neurons against accuracy gain and LP time", m,
                 "Top-N neurons of the default ranking (gradient blame, hidden layers) repaired "
                 "with no validation guard. Gains in points over the quantized model; 'LP s' "
                 "is the summed HiGHS solve time (the LPs run two at a time), 'wall s' the whole "
                 "candidate: recording layer inputs, summaries, LPs. R = 1,000 training images, "
                 "V = 1,000 images drawn from the test file, T = the other 9,000.")
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = sorted((r for r in rows if r["model"] == model), key=lambda r: r["n"])
        out += [f"## {model} ({sub[0]['setting'].upper()}, quantized test "
                f"{sub[0]['quantized']['test']:.2f} %)", "",
                "| N | repair gain | validation gain | test gain | neurons changed | LPs | "
                "LP s | slowest LP s | wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sub:
            g = {s: r["repaired"][s] - r["quantized"][s] for s in r["quantized"]}
            out.append(f"| {r['n']}{' (all)' if r['all'] else ''} | {g['repair']:+.2f} | "
                       f"{g['validation']:+.2f} | {g['test']:+.2f} | {r['neurons_changed']} | "
                       f"{r['lps']} | {r['lp_s']:.2f} | {r['lp_max_s']:.2f} | "
                       f"{r['wall_s']:.1f} |")
        out.append("")

    def plot(plt):
        fig, (gain, cost) = plt.subplots(1, 2, figsize=(11, 4))
        for model in dict.fromkeys(r["model"] for r in rows):
            sub = sorted((r for r in rows if r["model"] == model), key=lambda r: r["n"])
            ns = [r["n"] for r in sub]
            gain.plot(ns, [r["repaired"]["test"] - r["quantized"]["test"] for r in sub],
                      marker="o", label=model)
            cost.plot([r["lp_s"] for r in sub],
                      [r["repaired"]["test"] - r["quantized"]["test"] for r in sub],
                      marker="o", label=model)
        gain.set_xscale("log")
        gain.set_xlabel("repaired neurons N (log)")
        cost.set_xscale("log")
        cost.set_xlabel("summed LP solve seconds (log)")
        for ax in (gain, cost):
            ax.set_ylabel("test accuracy gain (points)")
            ax.axhline(0, color="k", lw=0.8)
            ax.legend()
        return fig

    write(NAME, "\n".join(out) + "\n", plot if rows else None)


if __name__ == "__main__":
    main()
