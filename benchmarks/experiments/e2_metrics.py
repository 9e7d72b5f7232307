"""E2 (the seed's experiment 2): is any way of blaming neurons reliably better than Random at
the same number of repaired neurons?

    python benchmarks/experiments/e2_metrics.py [--models conv3 conv5 resnet20]
        [--fractions 1 5 10 25] [--metrics gradient ochiai gradient+rounds ...]
        [--random-seeds 3]
        [--name e2_metrics] [--fresh | --render] [--without-all] [--merge NAME ...]

For each model, metric and fraction p: the top p % of the neurons of that metric's ranking
(hidden layers, as the default preset repairs) are repaired with the default LPs and no
validation guard, so the ranking alone decides what changes; "all" repairs every neuron (the
reference). Random is run with several seeds to show its spread. A metric "name@rule" is an
SBFL metric on spectra from the state rule `rule` (e.g. ochiai@graded_error); "name+roundsP"
ranks in rounds of P % of the neurons (5 when P is left out), each on the model with the
neurons chosen so far repaired (qnnrepair.experimental.rank_in_rounds). `--neurons`
gives absolute counts instead of fractions (the seed's N = 1, 5, 10, 50).

Two processes can share the machine by writing to their own `--name` with `--without-all` (the
every-neuron reference is already in the main file), then `--name MAIN --merge THEIRS ...` adds
their rows (each keeps its own command) to MAIN's file and renders it.
"""

from __future__ import annotations

import json

import numpy as np
from _shared import (
    OUT,
    SETTINGS,
    Clock,
    accuracies,
    arguments,
    commands,
    header,
    meta,
    quantized,
    rerender,
    results,
    workload,
    write,
)
from common import git_revision

from qnnrepair.experimental import rank_in_rounds
from qnnrepair.localization import METRICS, make_localizer
from qnnrepair.quantization import batches
from qnnrepair.repair import Repairer, preset

NAME = "e2_metrics"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=["conv3", "conv5", "resnet20"])
    parser.add_argument("--neurons", nargs="+", type=int)
    parser.add_argument("--fractions", nargs="+", type=float, default=[1, 5, 10, 25])
    parser.add_argument("--metrics", nargs="+",
                        default=sorted(m for m in METRICS if m != "random"))
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--without-all", action="store_true",
                        help="skip the every-neuron reference (another file has it)")
    parser.add_argument("--merge", nargs="+", metavar="NAME",
                        help="add the rows of these result files to --name's, then render")
    args = parser.parse_args()
    if args.render:
        return rerender(args.name, render)
    if args.merge:
        return merge(args.name, args.merge)
    sizes = args.neurons or [f"{p:g}%" for p in args.fractions] + ["all"]
    m = meta(sizes=sizes, name=args.name)
    rows = results(args.name, args.fresh)
    runs = [(metric, 0) for metric in args.metrics] + \
        [("random", seed) for seed in range(args.random_seeds)]
    for model in args.models:
        work = workload(model, args.shared)
        qmodel = quantized(work, model, work.images("repair"))
        before = accuracies(qmodel.model, work)
        repairer = Repairer(preset("default"))
        layers = repairer.repair_layers(qmodel)
        n_ranked = sum(qmodel.layer(name).out_features for name in layers)
        for metric, seed in runs:
            todo = [s for s in sizes
                    if not rows.has(model=model, metric=metric, seed=seed, n=s)]
            if (metric != runs[0][0] or "+rounds" in metric or args.without_all) \
                    and "all" in todo:
                todo.remove("all")  # every ranking repairs the same set
            if not todo:
                continue
            with Clock() as rank_clock:
                deepest = max((count(s, n_ranked) for s in todo if s != "all"), default=n_ranked)
                ranking = rank(qmodel, layers, work, metric, seed, deepest)
            for size in todo:
                n = count(size, n_ranked)
                with Clock() as clock:
                    repaired, changes, step = repairer.repair_neurons(
                        qmodel, ranking[:n], work.images("repair"), work.labels("repair"))
                rows.add({"model": model, "setting": SETTINGS[model], "metric": metric,
                          "seed": seed, "n": size, "neurons": n, "quantized": before,
                          "repaired": accuracies(repaired.model, work),
                          "neurons_changed": len(changes), "lps": step.n_lps,
                          "lp_s": float(np.sum(step.lp_seconds)), "wall_s": clock.wall,
                          "rank_s": rank_clock.wall, "command": m["command"],
                          "revision": git_revision()}, m)
                print(f"{model} {metric}/{seed} top-{size} ({n}): test {before['test']:.2f} -> "
                      f"{rows.rows[-1]['repaired']['test']:.2f}", flush=True)
    render(rows.rows, m)


def merge(name: str, others: list[str]) -> None:
    """The rows of `others` not already in `name`'s file (same model, metric, seed, size) added
    to it; the table drawn again."""
    rows = results(name, fresh=False)
    saved = json.loads((OUT / f"{name}.json").read_text())["meta"]
    key = ("model", "metric", "seed", "n")
    for other in others:
        path = OUT / f"{other}.json"
        if not path.exists():
            raise SystemExit(f"no rows file {path}: run e2_metrics.py --name {other} first")
        for row in json.loads(path.read_text())["rows"]:
            if not rows.has(**{k: row[k] for k in key}):
                rows.add(row, saved)
    render(rows.rows, saved)


def count(size, n_ranked: int) -> int:
    """Neurons in a size: an absolute N, "p%" of the ranked neurons (at least 1), or "all"."""
    if size == "all":
        return n_ranked
    if isinstance(size, str) and size.endswith("%"):
        return max(1, round(float(size[:-1]) / 100 * n_ranked))
    return int(size)


def rank(qmodel, layers, work, metric: str, seed: int, n_neurons: int | None = None) -> list:
    """The ranking of `metric`: "name", "name@rule", or "name+roundsP" (re-ranked on the
    repaired model every P % of the ranked neurons, 5 by default, down to `n_neurons`, or all)."""
    images, labels = work.images("repair"), work.labels("repair")
    base, rounds, percent = metric.partition("+rounds")
    name, _, rule = base.partition("@")
    if rounds:
        config = preset("default", metric=name, state_rule=rule or "relative_error", seed=seed)
        repairer = Repairer(config)
        n_ranked = sum(qmodel.layer(k).out_features for k in layers)
        size = count(f"{percent or 5}%", n_ranked)
        return rank_in_rounds(repairer, qmodel, n_neurons or n_ranked, size, images, labels)
    localizer = make_localizer(name, state_rule=rule or "relative_error", seed=seed)
    return localizer.fit(qmodel.float_model, qmodel.model, layers,
                         list(zip(batches(images, 250), batches(labels, 250)))).ranking_


def gains(rows: list[dict], model: str, metric: str, n, split: str = "test") -> list[float]:
    return [r["repaired"][split] - r["quantized"][split] for r in rows
            if r["model"] == model and r["metric"] == metric and r["n"] == n]


def render(rows: list[dict], m: dict) -> None:
    fractions = any(str(r["n"]).endswith("%") for r in rows)
    out = header("E2: blame against Random", m,
                 "Test-accuracy gain in points (repaired top "
                 + ("p %" if fractions else "N") + " minus quantized) per metric; "
                 "Random as mean [min, max] over its seeds; "
                 + ("'all' repairs every ranked neuron (the same set for every metric). "
                    if any(r["n"] == "all" for r in rows) else "")
                 + "R = 1,000 training images (also the "
                 "calibration set); T = the test images not drawn for validation. Per-channel "
                 "weights, first and last layer at 8 bits; no validation guard, so a ranking "
                 "that picks harmful neurons shows as a loss. "
                 + ("Targets: at 5 % and 10 % at least twice Random's mean gain; at 10 % at "
                    "least half of 'all'." if fractions else
                    "Last column: at how many N the metric's gain exceeds the largest of "
                    "Random's."))
    if any(r.get("command") for r in rows):
        out[4:5] = commands(rows, f"rows that carry no command: `{m['command']}`",
                            with_revisions=True)
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    out += _rounds_on_validation(rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        sizes = sorted({r["n"] for r in sub if r["n"] != "all"},
                       key=lambda s: next(r.get("neurons", s) for r in sub if r["n"] == s))
        every = gains(sub, model, metrics[0], "all")
        width = {s: next(r.get("neurons", s) for r in sub if r["n"] == s) for s in sizes}
        out += [f"## {model} ({sub[0]['setting'].upper()}, quantized test "
                f"{sub[0]['quantized']['test']:.2f} %"
                + (f", every neuron repaired: {every[0]:+.2f}" if every else "") + ")", "",
                "| metric | " + " | ".join(f"top {s} ({width[s]})" for s in sizes)
                + (" | 2x Random at 5 %, 10 % | 10 % >= half of all |" if fractions
                   else " | beats Random's max |"),
                "|---|" + "---|" * (len(sizes) + (2 if fractions else 1))]
        for metric in metrics:
            cells = []
            for s in sizes:
                g = gains(sub, model, metric, s)
                cells.append("-" if not g else f"{np.mean(g):+.2f}" + (
                    f" [{min(g):+.2f}, {max(g):+.2f}]" if len(g) > 1 else ""))
            verdict = (_verdicts(sub, model, metric, every) if fractions
                       else _beats_random(sub, model, metric, sizes))
            out.append(f"| {metric} | " + " | ".join(cells) + f" | {verdict} |")
        out.append("")

    def plot(plt):
        models = list(dict.fromkeys(r["model"] for r in rows))
        fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            sub = [r for r in rows if r["model"] == model]
            sizes = sorted({(r.get("neurons", r["n"]), r["n"]) for r in sub})
            for metric in metrics:
                ys = [np.mean(gains(sub, model, metric, s) or
                              gains(sub, model, metrics[0], s) or [np.nan]) for _, s in sizes]
                style = dict(color="k", lw=2.5, ls="--") if metric == "random" else {}
                ax.plot([n for n, _ in sizes], ys, marker="o", label=metric, **style)
            ax.set_xscale("log")
            ax.set_xlabel("repaired neurons (log)")
            ax.set_ylabel("test accuracy gain (points)")
            ax.set_title(f"{model} {sub[0]['setting'].upper()}")
        axes[0][0].legend(fontsize=7)
        return fig

    write(m.get("name", NAME), "\n".join(out) + "\n", plot if rows else None)


def _rounds_on_validation(rows: list[dict]) -> list[str]:
    """Per model, the round size of the gradient in rounds that validation prefers (the larger
    V gain summed over the top 5 % and 10 %), with its test gains against Random's: E2 has no
    guard, so choosing the size by these test gains would be choosing on test."""
    head = ["## Gradient in rounds, round size chosen on validation", "",
            "Per model, among the `gradient+roundsP` rows, the P whose V gain summed over the "
            "top 5 % and 10 % is largest (ties: the larger P, fewer rounds); then its test "
            "gains (T) beside Random's mean.", "",
            "| model | V gain at 5 %, 10 % per round size | chosen | T gain at 5 %, 10 % | "
            "Random T at 5 %, 10 % | 2x Random at 5 %, 10 % | 10 % >= half of all |",
            "|---|---|---|---|---|---|---|"]
    body = []
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        tried = rounds_tried(sub, model)
        if not tried:
            continue
        size = {m: round_size(m) for m in tried}
        chosen = rounds_chosen(tried)
        test = [np.mean(gains(sub, model, chosen, s)) for s in ("5%", "10%")]
        rnd = [np.mean(gains(sub, model, "random", s) or [np.nan]) for s in ("5%", "10%")]
        every = [r["repaired"]["test"] - r["quantized"]["test"] for r in sub
                 if r["n"] == "all"][:1]
        per_size = "; ".join(f"{size[m]:g} %: {a:+.2f}, {b:+.2f}" for m, (a, b) in
                             sorted(tried.items(), key=lambda kv: -size[kv[0]]))
        body.append(f"| {model} | {per_size} | {size[chosen]:g} % | {test[0]:+.2f}, "
                    f"{test[1]:+.2f} | {rnd[0]:+.2f}, {rnd[1]:+.2f} | "
                    + _verdicts(sub, model, chosen, every) + " |")
    return head + body + [""] if body else []


def round_size(metric: str) -> float:
    """P of "gradient+roundsP" (5 when left out)."""
    return float(metric.partition("+rounds")[2] or 5)


def rounds_tried(rows: list[dict], model: str) -> dict[str, list[float]]:
    """The model's `gradient+roundsP` metrics with rows at 5 % and 10 %: their mean V gains."""
    tried = {}
    for metric in dict.fromkeys(r["metric"] for r in rows if r["model"] == model):
        if metric.startswith("gradient+rounds"):
            v = [gains(rows, model, metric, s, "validation") for s in ("5%", "10%")]
            if all(v):
                tried[metric] = [float(np.mean(g)) for g in v]
    return tried


def rounds_chosen(tried: dict[str, list[float]]) -> str:
    """The round size validation prefers: the largest V gain summed over 5 % and 10 %, ties to
    the larger size (fewer rounds)."""
    return max(tried, key=lambda m: (round(sum(tried[m]), 6), round_size(m)))


def _beats_random(sub, model, metric, sizes) -> str:
    """At how many of `sizes` the metric's mean gain exceeds Random's largest."""
    if metric == "random":
        return "-"
    pairs = [(gains(sub, model, metric, s), gains(sub, model, "random", s)) for s in sizes]
    pairs = [(g, rnd) for g, rnd in pairs if g and rnd]
    return f"{sum(np.mean(g) > max(rnd) for g, rnd in pairs)} of {len(pairs)}"


def _verdicts(sub, model, metric, every) -> str:
    if metric == "random":
        return "- | -"
    twice = []
    for s in ("5%", "10%"):
        g, rnd = gains(sub, model, metric, s), gains(sub, model, "random", s)
        if g and rnd:
            twice.append(np.mean(g) >= 2 * np.mean(rnd) and np.mean(g) > 0)
    at_ten = gains(sub, model, metric, "10%")
    half = "-" if not (at_ten and every) else ("yes" if at_ten[0] >= every[0] / 2 else "no")
    return ("-" if not twice else "yes" if all(twice) else "no") + " | " + half


if __name__ == "__main__":
    main()
