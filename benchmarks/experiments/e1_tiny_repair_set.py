"""E1 (the seed's experiment 1): repair Conv3 with a 10-image repair set; does the repair hold on
the test set?

    python benchmarks/experiments/e1_tiny_repair_set.py [--draws 3] [--fresh | --render]

The quantizer is calibrated on 1,000 training images; the repair set is 10 of them (one draw
per seed), validation 1,000 other training images, test the 10,000 test images. Each draw is
repaired with the default and the paper preset.
"""

from __future__ import annotations

import numpy as np
import torch
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

NAME, MODEL = "e1_tiny_repair_set", "conv3"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--draws", type=int, default=3, help="10-image repair sets (seeds)")
    parser.add_argument("--size", type=int, default=10)
    args = parser.parse_args()
    if args.render:
        return rerender(NAME, render)
    m = meta(model=MODEL, setting=SETTINGS[MODEL], size=args.size)
    rows = results(NAME, args.fresh)
    work = workload(MODEL, args.shared)
    qmodel = quantized(work, MODEL, work.images("repair"))
    for draw in range(args.draws):
        pick = torch.from_numpy(np.random.default_rng(draw).choice(
            len(work.labels("repair")), args.size, replace=False))
        split = {"repair": (work.images("repair")[pick], work.labels("repair")[pick]),
                 "validation": (work.images("validation"), work.labels("validation")),
                 "test": (work.images("test"), work.labels("test"))}
        before = accuracies(qmodel.model, work, split)
        for name in ("default", "paper"):
            if rows.has(draw=draw, preset=name):
                continue
            with Clock() as clock:
                r = Repairer(preset(name, seed=draw)).fit(qmodel, *split["repair"],
                                                          *split["validation"])
            rows.add({"draw": draw, "preset": name, "float": accuracies(work.model, work, split),
                      "quantized": before, "repaired": accuracies(r.repaired_.model, work, split),
                      "neurons_changed": len(r.changes_), "wall_s": clock.wall,
                      "cpu_s": clock.cpu}, m)
            print(f"draw {draw} {name}: test {before['test']:.2f} -> "
                  f"{rows.rows[-1]['repaired']['test']:.2f}", flush=True)
    render(rows.rows, m)


def render(rows: list[dict], m: dict) -> None:
    out = header(f"E1: {m['model']} repaired with {m['size']} images", m,
                 f"{m['model']} at {m['setting'].upper()} (per-channel weights, first and last "
                 f"layer at 8 bits), calibrated on 1,000 training images; repair set {m['size']} "
                 "of them per draw; validation 1,000 other training images; test 10,000 test "
                 "images. Accuracies in %.")
    out += ["| draw | preset | repair before | repair after | validation before | "
            "validation after | test float | test before | test after | neurons | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q, a = r["quantized"], r["repaired"]
        out.append(f"| {r['draw']} | {r['preset']} | {q['repair']:.0f} | {a['repair']:.0f} | "
                   f"{q['validation']:.2f} | {a['validation']:.2f} | {r['float']['test']:.2f} | "
                   f"{q['test']:.2f} | {a['test']:.2f} | {r['neurons_changed']} | "
                   f"{r['wall_s']:.1f} |")

    def plot(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"draw {r['draw']}\n{r['preset']}" for r in rows]
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["quantized"]["test"] for r in rows], 0.4, label="quantized")
        ax.bar(xs + 0.2, [r["repaired"]["test"] for r in rows], 0.4, label="repaired")
        ax.axhline(rows[0]["float"]["test"], color="k", ls="--", label="float")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_ylim(min(r["quantized"]["test"] for r in rows) - 5, rows[0]["float"]["test"] + 2)
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"E1: {m['model']} {m['setting'].upper()}, {m['size']}-image repair sets")
        ax.legend()
        return fig

    write(NAME, "\n".join(out) + "\n", plot if rows else None)


if __name__ == "__main__":
    main()
