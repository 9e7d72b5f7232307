"""How the blame is spread over neurons and layers, per E2 model: can any ranking beat Random?

    python benchmarks/experiments/blame_spread.py [--models conv3 conv5 resnet20 resnet32 vgg
        mobilenetv2] [--name blame_spread]

E2's workloads (R = 1,000 training images, each model at SETTINGS[model]) and E2's neurons (the
layers the default repair ranks). The gradient blame (the default localizer: first-order drop
of KL(F || Q) over R when a neuron's quantized output is moved to the float one) per neuron;
then the share of the positive blame held by the top 1, 5, 10, 25 % of neurons, that share
over p (how many times Random's expected share the best ranking by this blame holds: if gains
were proportional to blame removed, E2's "twice Random" needs at least 2), the layers that hold
half of it, and E2's measured gains of the chosen gradient-in-rounds ranking over Random's
(from e2_fractions.json) beside them. Writes blame_spread.json / .md / .png.
"""

from __future__ import annotations

import json
import math

import numpy as np
from _shared import OUT, SETTINGS, Clock, arguments, header, meta, quantized, workload
from blame_reference import concentration
from e2_metrics import gains, rounds_chosen, rounds_tried

from qnnrepair.localization import make_localizer
from qnnrepair.quantization import batches
from qnnrepair.repair import Repairer, preset

NAME = "blame_spread"
MODELS = ["conv3", "conv5", "resnet20", "resnet32", "vgg", "mobilenetv2"]
FRACTIONS = (1, 5, 10, 25)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args()
    m = meta(name=args.name)
    path = OUT / f"{args.name}.json"
    if args.render:
        saved = json.loads(path.read_text())
        return render(saved["results"], saved["meta"])
    done = {} if args.fresh or not path.exists() else json.loads(path.read_text())["results"]
    for model in args.models:
        if model in done:
            continue
        with Clock() as clock:
            done[model] = spread(model, args.shared)
        done[model]["seconds"] = clock.wall
        print(f"{model}: top 10 % hold {done[model]['concentration']['top10%']:.2f} of the "
              f"blame ({clock.wall:.0f} s)", flush=True)
        path.write_text(json.dumps({"meta": m, "results": done}, indent=1))
    render(done, m)


def spread(model: str, shared) -> dict:
    work = workload(model, shared)
    images, labels = work.images("repair"), work.labels("repair")
    qmodel = quantized(work, model, images)
    layers = Repairer(preset("default")).repair_layers(qmodel)
    data = list(zip(batches(images, 250), batches(labels, 250)))
    scores = make_localizer("gradient").fit(qmodel.float_model, qmodel.model, layers,
                                            data).scores_
    flat = np.concatenate([scores[k] for k in layers])
    positive = {k: float(np.clip(scores[k], 0, None).sum()) for k in layers}
    total = sum(positive.values())
    return {"setting": SETTINGS[model], "n_neurons": int(len(flat)),
            "positive_share": float((flat > 0).mean()),
            "concentration": concentration(flat),
            "layer_share": {k: positive[k] / total for k in layers},
            "layer_neurons": {k: int(len(scores[k])) for k in layers},
            "curve": cumulative(flat)}


def cumulative(scores: np.ndarray, points: int = 101) -> list[float]:
    """Share of the positive blame held by the top x of the neurons, x = 0, 0.01, ..., 1."""
    blame = np.sort(np.clip(scores, 0, None))[::-1]
    held = np.concatenate([[0.0], np.cumsum(blame) / blame.sum()])
    return [float(held[math.ceil(x * len(blame))]) for x in np.linspace(0, 1, points)]


def half_the_blame(share: dict[str, float]) -> list[str]:
    """The fewest layers that together hold half the positive blame, largest first."""
    out, held = [], 0.0
    for layer, s in sorted(share.items(), key=lambda kv: -kv[1]):
        if held >= 0.5:
            break
        out.append(layer)
        held += s
    return out


def e2_ratios() -> dict[str, list[float]]:
    """From e2_fractions.json: per model, the test gain of the gradient-in-rounds ranking chosen
    on validation (as E2's first table chooses it) over Random's mean gain, at 5 % and 10 %."""
    path = OUT / "e2_fractions.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        tried = rounds_tried(rows, model)
        if tried:
            chosen = rounds_chosen(tried)
            out[model] = [float(np.mean(gains(rows, model, chosen, s))
                                / np.mean(gains(rows, model, "random", s)))
                          for s in ("5%", "10%")]
    return out


def render(results: dict, m: dict) -> None:
    out = header("Blame spread: how much of the blame the top neurons hold", m,
                 "Gradient blame (the default localizer) per hidden neuron that the default "
                 "repair ranks, R = 1,000 training images, each model at its E2 setting. 'top p "
                 "%': share of the positive blame held by the top p % of neurons; 'x Random': "
                 "that share over p, the multiple of Random's expected share that the best "
                 "ranking by this blame holds. 'E2 / Random': the measured test gain of the "
                 "gradient in rounds (round size chosen on validation) over Random's mean "
                 "gain, from e2_fractions.json; E2's target is 2 at 5 % and at 10 %.")
    ratios = e2_ratios()
    out += ["| model | neurons | blame > 0 | top 1 % | top 5 % | top 10 % | top 25 % | "
            "x Random at 5 %, 10 % | E2 / Random at 5 %, 10 % | layers holding half "
            "(of all) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, r in results.items():
        c = r["concentration"]
        e2 = ratios.get(model)
        half = half_the_blame(r["layer_share"])
        out.append(f"| {model} ({r['setting'].upper()}) | {r['n_neurons']} | "
                   f"{r['positive_share']:.0%} | "
                   + " | ".join(f"{c[f'top{p}%']:.2f}" for p in FRACTIONS)
                   + f" | {c['top5%'] / 0.05:.1f}, {c['top10%'] / 0.10:.1f} | "
                   + (f"{e2[0]:.1f}, {e2[1]:.1f}" if e2 else "-")
                   + f" | {len(half)} of {len(r['layer_share'])} |")
    out += ["", "The layers with the most blame (share of the model's positive blame, and the "
            "layer's neurons):", ""]
    for model, r in results.items():
        top = sorted(r["layer_share"].items(), key=lambda kv: -kv[1])[:4]
        out.append(f"- {model}: " + ", ".join(
            f"{k} {s:.2f} ({r['layer_neurons'][k]})" for k, s in top))
    out += ["", "Seconds per model (quantize, rank): " + ", ".join(
        f"{k} {r['seconds']:.0f}" for k, r in results.items())]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{m['name']}.md").write_text("\n".join(out) + "\n")
    plot(results, OUT / f"{m['name']}.png")


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    left, right = axes
    for model, r in results.items():
        x = np.linspace(0, 100, len(r["curve"]))
        left.plot(x, r["curve"], label=model)
        shares = list(r["layer_share"].values())
        right.plot(np.linspace(0, 1, len(shares)), shares, marker=".", label=model)
    left.plot([0, 100], [0, 1], color="k", ls="--", lw=1, label="Random (expected)")
    left.set_xlim(0, 50)
    left.set_xlabel("top neurons by gradient blame (%)")
    left.set_ylabel("share of the positive blame held")
    left.set_title("How concentrated the blame is")
    left.legend(fontsize=8)
    right.set_xlabel("layer depth (0 = first ranked layer, 1 = last)")
    right.set_ylabel("share of the model's positive blame")
    right.set_title("Where the blame is, per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
