"""E5 (open question 3): quantization strategies, and how much repair helps after each.

    python benchmarks/experiments/e5_quant_strategies.py [--models resnet20] [--setting w3a8]
        [--k 3] [--random-draws 1] [--strategies ...] [--fresh | --render]

Does the way a network is quantized change what repair can do? At one low bit setting (W3A8
by default; first and last layer at 8 bits throughout) the model is quantized six ways:
per-channel or per-tensor weight scales, each from max-abs or MSE-optimal clipping; and mixed
precision on top of per-channel max-abs, with k more layers kept at 8 bits, chosen either by
qnnrepair's own localization ("mixed localized") or at random ("mixed random", the control:
for each localized layer a random one with as many weights, so the same bit budget, and the
localization's value shows). Each quantized model is then corrected by empirical bias
correction, and repaired by the default preset.

R = 1,000 training images (also the calibration set), V = 1,000 images drawn from the test
file, T = the other 9,000 (evaluated after every choice is made; the 8-bit layers are chosen
on R). Writes benchmarks/results/experiments/e5_quant_strategies.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _shared import (
    DEFAULT_SHARED,
    OUT,
    Clock,
    accuracies,
    header,
    meta,
    quantized,
    results,
    workload,
    write,
)

from qnnrepair.baselines import get_baseline
from qnnrepair.data.splits import SPLIT_NAMES
from qnnrepair.quantization import LayerBits
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.engine import fit_localizer

NAME = "e5_quant_strategies"
UNIFORM = {"per-channel maxabs": {"per_channel": True, "weight_clipping": "maxabs"},
           "per-channel mse": {"per_channel": True, "weight_clipping": "mse"},
           "per-tensor maxabs": {"per_channel": False, "weight_clipping": "maxabs"},
           "per-tensor mse": {"per_channel": False, "weight_clipping": "mse"}}
MIXED = ("mixed localized", "mixed random")
BASE = UNIFORM["per-channel maxabs"]  # what mixed precision starts from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--setting", default="w3a8")
    parser.add_argument("--strategies", nargs="+", default=[*UNIFORM, *MIXED],
                        choices=[*UNIFORM, *MIXED])
    parser.add_argument("--k", type=int, default=3, help="extra layers kept at 8 bits (mixed)")
    parser.add_argument("--random-draws", type=int, default=1, help="seeds of 'mixed random'")
    parser.add_argument("--n-repair", type=int, default=1000)
    parser.add_argument("--n-validation", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=None, help="first N test images (all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=NAME, help="results file stem")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier rows")
    parser.add_argument("--render", action="store_true", help="only rewrite md/png from JSON")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((OUT / f"{args.name}.json").read_text())
        return render(args.name, saved["rows"], saved["meta"])
    m = meta(setting=args.setting, k=args.k, seed=args.seed, repair=preset("default").to_dict())
    rows = results(args.name, args.fresh)
    for model in args.models:
        work = workload(model, args.shared, args.n_repair, args.n_validation, args.seed,
                        args.n_test)
        m["sizes"] = {s: len(work.labels(s)) for s in SPLIT_NAMES}
        float_acc = None
        for strategy in expand(args.strategies, args.random_draws):
            key = {"model": model, "setting": args.setting, "strategy": strategy,
                   "k": None if strategy in UNIFORM else args.k}
            if rows.has(**key):
                continue
            float_acc = float_acc or accuracies(work.model, work)
            row = run(work, model, args.setting, strategy, args.k, args.seed)
            rows.add({**key, "float": float_acc, **row}, m)
            print(f"{model} {strategy}: test {row['quantized']['test']:.2f} -> bias correction "
                  f"{row['bias_correction']['test']:.2f}, repaired {row['repaired']['test']:.2f}"
                  f" ({row['wall_s']:.0f} s)", flush=True)
    render(args.name, rows.rows, m)


def expand(strategies: list[str], draws: int) -> list[str]:
    """'mixed random' becomes one strategy per seed: 'mixed random 0', 'mixed random 1', ..."""
    out = []
    for s in strategies:
        out += [f"{s} {d}" for d in range(draws)] if s == "mixed random" else [s]
    return out


def run(work, model: str, setting: str, strategy: str, k: int, seed: int) -> dict:
    """Quantize one way, then bias-correct and repair that model; accuracies on R, V, T."""
    images, labels = work.images("repair"), work.labels("repair")
    chosen, scores, select_s = [], {}, 0.0
    if strategy in UNIFORM:
        qmodel = quantized(work, model, images, setting, **UNIFORM[strategy])
    else:
        with Clock() as clock:
            chosen, scores = eight_bit_layers(work, model, setting, strategy, k)
        select_s = clock.wall
        qmodel = quantized(work, model, images, setting, **BASE,
                           overrides=tuple(LayerBits(n, 8, 8) for n in chosen))
    corrected = get_baseline("bias_correction")(qmodel, images, seed=seed)
    with Clock() as clock:
        repairer = Repairer(preset("default", seed=seed)).fit(
            qmodel, images, labels, work.images("validation"), work.labels("validation"))
    return {"quant_config": qmodel.config.to_dict(), "eight_bit_layers": chosen,
            "layer_scores": scores, "select_s": select_s,
            "mean_weight_bits": mean_weight_bits(qmodel),
            "quantized": accuracies(qmodel.model, work),
            "bias_correction": accuracies(corrected.model, work),
            "repaired": accuracies(repairer.repaired_.model, work),
            "neurons_changed": len(repairer.changes_),
            "lps": sum(s.n_lps for s in repairer.steps_), "wall_s": clock.wall,
            "cpu_s": clock.cpu}


def eight_bit_layers(work, model: str, setting: str, strategy: str, k: int
                     ) -> tuple[list[str], dict[str, float]]:
    """The k layers (of those below 8 bits) to keep at 8 bits, in forward order, and each
    candidate layer's score.

    A layer's score is the mean blame of its neurons under the default metric, on the
    uniformly quantized model and the repair set. The mean, rather than the share of
    top-ranked neurons: it needs no cut-off N, and a share of the top N favours wide layers
    (ResNet-20's 64-channel stage holds half the neurons) by count alone.

    The random control keeps the same bit budget in weights, not only in layers: for each
    localized layer it draws one of the candidates with as many weights (ResNet-20's layers
    range from 2,304 to 36,864 weights; k random layers of any size cost more bits).
    """
    base = quantized(work, model, work.images("repair"), setting, **BASE)
    n = len(base.layers)
    candidates = [name for i, name in enumerate(base.layers)
                  if base.config.bits_for(name, i, n) != (8, 8)]
    localizer = fit_localizer(base, work.images("repair"), work.labels("repair"),
                              preset("default"))
    scores = {name: float(np.mean(localizer.scores_[name])) for name in candidates}
    # ties (when whole layers deviate on every input they score alike) go to the earlier
    # layer, as the localizer breaks ties; render() says how many layers tied
    top = set(sorted(candidates, key=lambda name: -scores[name])[:k])
    chosen = [name for name in candidates if name in top]
    if strategy == "mixed localized":
        return chosen, scores
    rng = np.random.default_rng(int(strategy.rsplit(" ", 1)[1]))
    size = {name: base.layer(name).weight_int.numel() for name in candidates}
    picked: set[str] = set()
    for name in chosen:
        pool = [c for c in candidates if size[c] == size[name] and c not in picked]
        picked.add(pool[rng.integers(len(pool))])
    return [name for name in candidates if name in picked], scores


def mean_weight_bits(qmodel) -> float:
    """Bits per weight over every quantized layer: the memory cost a strategy pays."""
    n, sizes = len(qmodel.layers), {}
    for i, name in enumerate(qmodel.layers):
        bits = qmodel.config.bits_for(name, i, n)[0]
        sizes[name] = (qmodel.layer(name).weight_int.numel(), bits)
    return sum(c * b for c, b in sizes.values()) / sum(c for c, _ in sizes.values())


def render(name: str, rows: list[dict], m: dict) -> None:
    sizes = m.get("sizes", {})
    out = header(
        f"E5: quantization strategies at {m['setting'].upper()}, and repair after each", m,
        f"Weights at {m['setting'].upper()} with the first and last layer at 8 bits; activations "
        "per tensor, min-max calibrated on R. Uniform strategies: per-channel or per-tensor "
        "weight scales from max-abs or MSE-optimal clipping. Mixed: per-channel max-abs with "
        f"{m['k']} more layers kept at W8A8, chosen by qnnrepair's localization (highest mean "
        "blame of a layer's neurons, default metric (gradient blame), on R) or at random (seeded "
        "control: per localized layer a random one with as many weights, the same bits). "
        "Bias correction: empirical, on R. Repaired: `preset(\"default\")`. R = "
        f"{sizes.get('repair', '?')} training images (also the calibration set), V = "
        f"{sizes.get('validation', '?')} images drawn from the test file, T = "
        f"{sizes.get('test', '?')} other test images. Accuracies in % as R / V / T; bits: mean "
        "bits per weight; wall and CPU seconds are the repair's.")
    out += ["| model | strategy | 8-bit layers added | bits | quantized | bias correction | "
            "repaired | neurons | LPs | wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|"
            "---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['strategy']} | {', '.join(r['eight_bit_layers']) or '-'}"
                   f" | {r['mean_weight_bits']:.2f} | {rvt(r['quantized'])} | "
                   f"{rvt(r['bias_correction'])} | {rvt(r['repaired'])} | "
                   f"{r['neurons_changed']} | {r['lps']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    out += ["", "Float (R / V / T): " + "; ".join(
        f"{model} {rvt(r['float'])}" for model, r in {r["model"]: r for r in rows}.items())]
    for r in rows:
        if r["strategy"] == "mixed localized":
            kth = sorted(r["layer_scores"].values(), reverse=True)[m["k"] - 1]
            tied = sum(np.isclose(v, kth) for v in r["layer_scores"].values())
            out += ["", f"Layer scores ({r['model']}, mean blame; layers scoring as "
                    f"the k-th: {tied}, ties go to the earlier layer): " + ", ".join(
                        f"{k} {v:.3f}" for k, v in r["layer_scores"].items())]
    write(name, "\n".join(out) + "\n", (lambda plt: plot(plt, rows, m)) if rows else None)


def rvt(acc: dict) -> str:
    return f"{acc['repair']:.1f} / {acc['validation']:.1f} / {acc['test']:.2f}"


def plot(plt, rows: list[dict], m: dict):
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(8 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == model]
        xs = np.arange(len(sub))
        for j, (key, label) in enumerate([("quantized", "quantized"),
                                          ("bias_correction", "bias correction"),
                                          ("repaired", "repaired (default)")]):
            ax.bar(xs + (j - 1) * 0.27, [r[key]["test"] for r in sub], 0.27, label=label)
        ax.axhline(sub[0]["float"]["test"], color="k", ls="--", label="float")
        ax.set_xticks(xs, [r["strategy"].replace(" ", "\n", 1) for r in sub], fontsize=8)
        low = min(r[key]["test"] for r in sub for key in ("quantized", "bias_correction"))
        ax.set_ylim(max(0, low - 5), sub[0]["float"]["test"] + 6)
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"E5: {model} {m['setting'].upper()}, quantization strategies")
        ax.legend(fontsize=8, loc="upper center", ncol=4)
    return fig


if __name__ == "__main__":
    main()
