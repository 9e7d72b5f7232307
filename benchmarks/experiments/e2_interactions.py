"""E2's shortfall traced: does repairing one more blamed neuron help, on top of those above it?

    python benchmarks/experiments/e2_interactions.py [--model resnet20] [--first 5] [--count 16]
        [--name e2_interactions] [--fresh | --render]

The top --first % of the gradient ranking is repaired (default LPs, no guard, as in E2); then,
for each of the next --count neurons of the ranking, the same repair with that neuron added (its
LPs and those of the repaired neurons below it solved again). Per neuron: the measured change
of D (KL to the float model summed over R) and of test accuracy; the first-order change of D
predicted from the repair's weight and bias deltas (qnnrepair.experimental.weight_gradients),
with the gradient taken at the quantized model Q and at the top --first % model; and its
gradient blame (the first-order drop of D if its output were the float one) at both. Writes
e2_interactions.json / .md.
"""

from __future__ import annotations

import _shared as shared
import numpy as np
import torch
from common import git_revision
from e2_metrics import count

from qnnrepair.experimental import weight_gradients
from qnnrepair.localization.blame import kl_divergence
from qnnrepair.quantization import batches
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.engine import fit_localizer

NAME = "e2_interactions"


def main() -> None:
    parser = shared.arguments(__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--first", type=float, default=5.0, help="%% of the ranking repaired")
    parser.add_argument("--count", type=int, default=16, help="next neurons tried one by one")
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args()
    if args.render:
        return shared.rerender(args.name, render)
    m = shared.meta(model=args.model, first=args.first, name=args.name)
    rows = shared.results(args.name, args.fresh)
    work = shared.workload(args.model, args.shared)
    images, labels = work.images("repair"), work.labels("repair")
    qmodel = shared.quantized(work, args.model, images)
    repairer = Repairer(preset("default"))
    layers = repairer.repair_layers(qmodel)
    chunks = list(zip(batches(images, 250), batches(labels, 250)))
    ranker = fit_localizer(qmodel, images, labels, repairer.config)  # the default: gradient
    blame, blame_at_q = ranker.ranking_, ranker.scores_
    n_first = count(f"{args.first:g}%", len(blame))
    with torch.no_grad():
        float_logits = qmodel.float_model(images)

    def divergence(model) -> float:
        with torch.no_grad():
            return float(kl_divergence(float_logits, model(images)).sum())

    def predicted(gradients, new, old) -> float:
        """sum(gW * dW) + sum(gb * db) over every layer repaired."""
        total = 0.0
        for name, (grad_w, grad_b) in gradients.items():
            a, b = new.layer(name), old.layer(name)
            dw = (a.dequantized_weight().double() - b.dequantized_weight().double()).numpy()
            db = (a.dequantized_bias().double() - b.dequantized_bias().double()).numpy()
            total += float((grad_w * dw).sum() + (grad_b * db).sum())
        return total

    base, _, _ = repairer.repair_neurons(qmodel, blame[:n_first], images, labels)
    at_q = weight_gradients(qmodel.float_model, qmodel.model, layers, chunks)
    at_base = weight_gradients(qmodel.float_model, base.model, layers, chunks)
    blame_at_base = fit_localizer(base, images, labels, repairer.config).scores_
    d_base, t_base = divergence(base.model), shared.accuracies(base.model, work)["test"]
    print(f"{args.model}: D on R {divergence(qmodel.model):.1f} quantized, {d_base:.1f} with the "
          f"top {n_first} repaired (test {t_base:.2f} %)", flush=True)
    for position in range(n_first, min(n_first + args.count, len(blame))):
        neuron = blame[position]
        if rows.has(model=args.model, first=args.first, position=position):
            continue
        repaired, _, _ = repairer.repair_neurons(qmodel, blame[:n_first] + [neuron], images,
                                                 labels)
        row = {"model": args.model, "setting": shared.SETTINGS[args.model], "first": args.first,
               "n_first": n_first, "position": position, "layer": neuron.layer,
               "index": neuron.index, "base_divergence": d_base, "base_test": t_base,
               "blame_at_q": float(blame_at_q[neuron.layer][neuron.index]),
               "measured": divergence(repaired.model) - d_base,
               "test_change": shared.accuracies(repaired.model, work)["test"] - t_base,
               "predicted_at_q": predicted(at_q, repaired, base),
               "predicted_at_base": predicted(at_base, repaired, base),
               "blame_at_base": float(blame_at_base[neuron.layer][neuron.index]),
               "command": m["command"], "revision": git_revision()}
        rows.add(row, m)
        print(f"{position} {neuron.layer}[{neuron.index}]: D {row['measured']:+.2f}, predicted "
              f"at Q {row['predicted_at_q']:+.2f}, at the top {n_first} "
              f"{row['predicted_at_base']:+.2f}", flush=True)
    render(rows.rows, m)


def agreement(rows: list[dict], key: str) -> int:
    return sum(np.sign(r[key]) == np.sign(r["measured"]) for r in rows)


def render(rows: list[dict], m: dict) -> None:
    out = shared.header("E2 traced: one more blamed neuron on top of the ones above it", m,
                 "D = KL(float || quantized) summed over R (1,000 training images); gradient "
                 "ranking, default LPs, no validation guard (as E2). Each row adds the neuron "
                 "at that position of the ranking to the repair of the top ones; 'measured' is "
                 "the change of D this makes, 'predicted' its first-order estimate from the "
                 "repair's weight and bias deltas, with dD/dW taken at the quantized model Q "
                 "and at the model with only the top ones repaired. Negative: D drops. "
                 "Blame: the neuron's gradient blame (the first-order drop of D if its output "
                 "were the float one) at Q, as ranked, and taken again at the model with the "
                 "top ones repaired, as experimental.rank_in_rounds ranks.")
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        first = sub[0]
        out += [f"## {model} ({first['setting'].upper()}): the top {first['n_first']} "
                f"({first['first']:g} %) repaired, D {first['base_divergence']:.1f}, test "
                f"{first['base_test']:.2f} %", "",
                "| position | neuron | measured change of D | test change (points) | "
                "predicted at Q | predicted at the top ones | blame at Q | blame at the top "
                "ones |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['position'] + 1} | {r['layer']}[{r['index']}] | {r['measured']:+.2f} | "
                f"{r['test_change']:+.2f} | {r['predicted_at_q']:+.2f} | "
                f"{r['predicted_at_base']:+.2f} | {r['blame_at_q']:+.2f} | "
                f"{r['blame_at_base']:+.2f} |" for r in sub]
        rises = sum(r["measured"] > 0 for r in sub)
        out += ["", f"D rose for {rises} of {len(sub)} neurons. Sign of the prediction right: "
                    f"{agreement(sub, 'predicted_at_q')} of {len(sub)} at Q, "
                    f"{agreement(sub, 'predicted_at_base')} of {len(sub)} at the model with the "
                    f"top {first['n_first']} repaired. The gradient blame taken again on that "
                    f"model predicts a drop (positive blame) for "
                    f"{sum(r['blame_at_base'] > 0 for r in sub)} neurons, of which D dropped "
                    f"for {sum(r['blame_at_base'] > 0 and r['measured'] < 0 for r in sub)}; "
                    f"at Q the blame was positive for "
                    f"{sum(r['blame_at_q'] > 0 for r in sub)}.", ""]
    shared.write(m.get("name", NAME), "\n".join(out))


if __name__ == "__main__":
    main()
