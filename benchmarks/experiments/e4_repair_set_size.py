"""E4 (the seed's open question 2): how large must the repair set be? Repair-set and test
accuracy (over-fitting made visible) and runtime for 10 to 5,000 repair images.

    python benchmarks/experiments/e4_repair_set_size.py [--model resnet20]
        [--sizes 10 100 1000 5000] [--fresh | --render]

The quantizer is calibrated once, on 1,000 training images, so only the repair set changes;
the repair sets are nested (each the first n of one seeded draw of 5,000 training images) and
validation is 1,000 images drawn from the test file, the same for every size, and test the
other 9,000.
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

NAME, POOL, CALIBRATION = "e4_repair_set_size", 5000, 1000


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000, 5000])
    args = parser.parse_args()
    if args.render:
        return rerender(NAME, render)
    m = meta(model=args.model, setting=SETTINGS[args.model])
    rows = results(NAME, args.fresh)
    work = workload(args.model, args.shared, n_repair=max(POOL, *args.sizes))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(work.labels("repair"))))
    qmodel = quantized(work, args.model, work.images("repair")[order[:CALIBRATION]])
    for size in args.sizes:
        if rows.has(model=args.model, size=size):
            continue
        pick = order[:size]
        split = {"repair": (work.images("repair")[pick], work.labels("repair")[pick]),
                 "validation": (work.images("validation"), work.labels("validation")),
                 "test": (work.images("test"), work.labels("test"))}
        with Clock() as clock:
            r = Repairer(preset("default")).fit(qmodel, *split["repair"], *split["validation"])
        rows.add({"model": args.model, "size": size,
                  "float": accuracies(work.model, work, split),
                  "quantized": accuracies(qmodel.model, work, split),
                  "repaired": accuracies(r.repaired_.model, work, split),
                  "neurons_changed": len(r.changes_), "lps": sum(s.n_lps for s in r.steps_),
                  "wall_s": clock.wall, "cpu_s": clock.cpu}, m)
        print(f"{args.model} R={size}: test {rows.rows[-1]['quantized']['test']:.2f} -> "
              f"{rows.rows[-1]['repaired']['test']:.2f} ({clock.wall:.0f}s)", flush=True)
    render(rows.rows, m)


def render(rows: list[dict], m: dict) -> None:
    out = header(f"E4: repair-set size ({m['model']}, {m['setting'].upper()})", m,
                 "Default preset. Calibration: 1,000 training images, the same for every size; "
                 "repair sets nested; validation 1,000 images drawn from the test file; test "
                 "the other images. The gap between repair-set and test accuracy is the "
                 "over-fitting.")
    out += ["| repair images | repair before | repair after | validation after | test before "
            "| test after | repair - test after | neurons | LPs | wall s | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(rows, key=lambda r: r["size"])
    for r in rows:
        q, a = r["quantized"], r["repaired"]
        out.append(f"| {r['size']} | {q['repair']:.2f} | {a['repair']:.2f} | "
                   f"{a['validation']:.2f} | {q['test']:.2f} | {a['test']:.2f} | "
                   f"{a['repair'] - a['test']:.2f} | {r['neurons_changed']} | {r['lps']} | "
                   f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    if rows:
        out += ["", f"Float: validation {rows[0]['float']['validation']:.2f}, test "
                f"{rows[0]['float']['test']:.2f}."]

    def plot(plt):
        fig, (acc, time) = plt.subplots(1, 2, figsize=(11, 4))
        sizes = [r["size"] for r in rows]
        for split, style in (("repair", "o-"), ("validation", "s-"), ("test", "^-")):
            acc.plot(sizes, [r["repaired"][split] for r in rows], style,
                     label=f"{split}, repaired")
        acc.plot(sizes, [r["quantized"]["test"] for r in rows], "k--", label="test, quantized")
        acc.axhline(rows[0]["float"]["test"], color="gray", ls=":", label="test, float")
        time.plot(sizes, [r["wall_s"] for r in rows], "o-")
        for ax in (acc, time):
            ax.set_xscale("log")
            ax.set_xlabel("repair images (log)")
        acc.set_ylabel("accuracy %")
        acc.legend(fontsize=8)
        time.set_ylabel("repair wall seconds")
        return fig

    write(NAME, "\n".join(out) + "\n", plot if rows else None)


if __name__ == "__main__":
    main()
