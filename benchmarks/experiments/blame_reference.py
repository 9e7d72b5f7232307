"""Blame reference: does a localizer agree with the exact counterfactual blame?

    python benchmarks/experiments/blame_reference.py [--model resnet20] [--n-repair 250]
        [--layers conv1 layer1.1.conv1 ...]

One workload (R = the first --n-repair images, which also calibrate the quantizer), quantized at
SETTINGS[model]. CounterfactualBlame (one forward per neuron) on --layers only, because it costs
688 forward passes of R for all of ResNet-20's hidden channels; on those neurons, the Spearman
rank correlation and the top-5 % overlap of GradientBlame (signed and absolute), Ochiai with the
default state rule (relative_error) and with graded_error, and Random, against it. Then how
concentrated the gradient blame is over all hidden neurons. Writes blame_reference.json / .md.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from _shared import OUT, SETTINGS, Clock, arguments, header, meta, quantized, workload

from qnnrepair.localization import make_localizer
from qnnrepair.quantization import batches

NAME = "blame_reference"
DEFAULT_LAYERS = ["conv1", "layer1.1.conv1", "layer2.0.conv2", "layer3.0.conv1",
                  "layer3.2.conv2"]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank (what Spearman needs when SBFL scores tie)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2
        start = stop + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.05) -> float:
    """|top-k(a) & top-k(b)| / k, k = ceil(fraction * n), ties by index (as rank_neurons)."""
    k = math.ceil(fraction * len(a))
    top = lambda v: set(np.lexsort((np.arange(len(v)), -v))[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def concentration(scores: np.ndarray) -> dict[str, float]:
    """Share of the total (positive) blame held by the top 1/5/10/25 % of neurons."""
    blame = np.sort(np.clip(scores, 0, None))[::-1]
    total = blame.sum()
    return {f"top{p}%": float(blame[:math.ceil(p / 100 * len(blame))].sum() / total)
            for p in (1, 5, 10, 25)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--n-repair", type=int, default=250)
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    args = parser.parse_args()
    m = meta(model=args.model, n_repair=args.n_repair, layers=args.layers)
    torch.set_num_threads(1)
    work = workload(args.model, args.shared, n_repair=args.n_repair)
    images, labels = work.images("repair"), work.labels("repair")
    qmodel = quantized(work, args.model, images)
    hidden = qmodel.layers[:-1]
    data = list(zip(batches(images, 250), batches(labels, 250)))
    fit = lambda loc, layers: loc.fit(qmodel.float_model, qmodel.model, layers, data)  # noqa: E731

    scores, seconds = {}, {}
    runs = {"gradient": dict(metric="gradient"),
            "gradient_abs": dict(metric="gradient", absolute=True),
            "ochiai": dict(metric="ochiai"),
            "ochiai_graded": dict(metric="ochiai", state_rule="graded_error"),
            "dstar_graded": dict(metric="dstar", state_rule="graded_error"),
            "tarantula_graded": dict(metric="tarantula", state_rule="graded_error"),
            "random": dict(metric="random")}
    for name, kwargs in runs.items():
        with Clock() as clock:
            scores[name] = fit(make_localizer(**kwargs), hidden).scores_
        seconds[name] = clock.wall
        print(f"{name}: {clock.wall:.1f} s", flush=True)
    with Clock() as clock:
        exact = fit(make_localizer("counterfactual"), args.layers).scores_
    seconds["counterfactual"] = clock.wall
    print(f"counterfactual on {len(args.layers)} layers: {clock.wall:.1f} s", flush=True)

    flat = lambda s, layers: np.concatenate([s[k] for k in layers])  # noqa: E731
    reference = flat(exact, args.layers)
    agreement = {}
    for name in runs:
        subset = flat(scores[name], args.layers)
        agreement[name] = {
            "spearman": spearman(subset, reference),
            "top5%": top_overlap(subset, reference),
            "spearman_per_layer": {k: spearman(scores[name][k], exact[k]) for k in args.layers},
            "distinct_scores": int(len(np.unique(subset)))}
    agreement["|gradient|"] = {  # the absolute value of the signed total
        "spearman": spearman(np.abs(flat(scores["gradient"], args.layers)), reference),
        "top5%": top_overlap(np.abs(flat(scores["gradient"], args.layers)), reference)}
    gradient = scores["gradient"]
    total = float(np.clip(flat(gradient, hidden), 0, None).sum())
    result = {
        "n_neurons_compared": int(len(reference)),
        "n_hidden_neurons": int(sum(len(gradient[k]) for k in hidden)),
        "agreement": agreement,
        "counterfactual_positive_share": float((reference > 0).mean()),
        "gradient_positive_share": float((flat(gradient, hidden) > 0).mean()),
        "concentration": {"gradient": concentration(flat(gradient, hidden)),
                          "counterfactual": concentration(reference)},
        "per_layer_share": {k: float(np.clip(gradient[k], 0, None).sum() / total)
                            for k in hidden},
        "seconds": seconds}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{NAME}.json").write_text(json.dumps({"meta": m, "result": result}, indent=1))
    render(result, m)


def render(r: dict, m: dict) -> None:
    out = header("Blame reference: localizers against the counterfactual blame", m,
                 f"{m['model']} at {SETTINGS[m['model']].upper()}, R = {m['n_repair']} training "
                 "images (also the calibration set). Counterfactual (exact drop of "
                 "KL(F || Q) summed over R when one channel's quantized output is replaced by the "
                 f"float one) on {r['n_neurons_compared']} neurons of layers "
                 f"{', '.join(m['layers'])}; every other localizer scored all "
                 f"{r['n_hidden_neurons']} hidden neurons and is compared on those.")
    out += ["| localizer | Spearman | top-5 % overlap | distinct scores |", "|---|---|---|---|"]
    for name, a in r["agreement"].items():
        out.append(f"| {name} | {a['spearman']:+.3f} | {a['top5%']:.2f} | "
                   f"{a.get('distinct_scores', '-')} |")
    out += ["", "Spearman per layer:", "",
            "| localizer | " + " | ".join(m["layers"]) + " |",
            "|---|" + "---|" * len(m["layers"])]
    for name, a in r["agreement"].items():
        if "spearman_per_layer" in a:
            out.append(f"| {name} | " + " | ".join(f"{a['spearman_per_layer'][k]:+.2f}"
                                                   for k in m["layers"]) + " |")
    out += ["", f"Positive blame: counterfactual {r['counterfactual_positive_share']:.0%} of the "
            f"compared neurons, signed gradient {r['gradient_positive_share']:.0%} of all "
            "hidden neurons.", "", "Concentration (share of the total positive blame held by "
            "the top p % of neurons):", "", "| blame | top 1 % | top 5 % | top 10 % | top 25 % |",
            "|---|---|---|---|---|"]
    for name, c in r["concentration"].items():
        out.append(f"| {name} | " + " | ".join(f"{c[f'top{p}%']:.2f}" for p in (1, 5, 10, 25))
                   + " |")
    out += ["", "Share of the positive gradient blame per layer:", "", "| layer | share |",
            "|---|---|"]
    out += [f"| {k} | {v:.3f} |" for k, v in r["per_layer_share"].items()]
    out += ["", "Wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())]
    (OUT / f"{NAME}.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
