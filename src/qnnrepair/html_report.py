"""A RepairReport as one self-contained HTML page: `render_html(report) -> str`.

Everything is inline: the CSS in a <style> element and the plots as SVG drawn here, so the
file opens anywhere, offline, and every number in it is text. SVG rather than matplotlib
PNGs because matplotlib is only in the `bench` extra, and a page of text and vectors stays
small and sharp at any zoom. No script: nothing to run, nothing to fail. Every string that
comes from the report (model spec, layer names, config values) goes through `html.escape`.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from qnnrepair import html_charts as ch
from qnnrepair.report import MODELS, SPLITS, RepairReport

__all__ = ["render_html"]

MAX_SIZE_ROWS = 12  # distinct LP sizes listed before "others"

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d1d1f; margin: 0 auto; max-width: 1180px; padding: 16px 28px 48px; }
h1 { font-size: 22px; margin: 8px 0 2px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #d8d8d8; padding-bottom: 3px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
p.sub { color: #555; margin: 0 0 10px; }
.note { background: #f2f6fb; border-left: 4px solid #2f6fb0; padding: 8px 12px; margin: 12px 0; }
.note.none { background: #fbf6ee; border-color: #e07b39; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8d8d8; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f4f4f5; font-weight: 600; }
td.num, th.num { text-align: right; }
td.up { color: #1a7f37; } td.down { color: #c62828; }
td.kept { color: #1a7f37; font-weight: 600; } td.rejected { color: #777; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
svg { display: block; margin: 4px 0 8px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
code { font-size: 12px; }
"""


def render_html(report: RepairReport) -> str:
    """The whole report as one HTML document (UTF-8 text, no external resources)."""
    title = (f"qnnrepair report: {report.model}, {report.setting}, seed {report.seed}")
    body = [f"<h1>{ch.e(title)}</h1>", _summary(report), _accuracy(report), _ranking(report),
            _layer_costs(report), _changes(report), _per_class(report), _lps(report),
            _steps(report), _config(report)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{ch.e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- sections

def _summary(report: RepairReport) -> str:
    acc, steps = report.accuracy, report.steps
    val = acc.get("validation", {})
    test = acc.get("test", {})
    if not steps:
        if val.get("quantized", math.nan) >= val.get("float", math.nan):
            why = (f"the quantized model is already as accurate as the float model on the "
                   f"validation set ({ch.pct(val.get('quantized'))}% vs "
                   f"{ch.pct(val.get('float'))}%)")
        else:
            why = "no repair step ran (time budget spent or no neuron to repair)"
        return (f'<p class="note none"><b>Nothing to repair:</b> {ch.e(why)}; the repaired model '
                "is the quantized model, unchanged.</p>")
    kept = sum(s["accepted"] for s in steps)
    weights = sum(c["weights_changed"] for c in report.changes)
    n = len(report.changes)
    return (f'<p class="note">{n} neuron{"" if n == 1 else "s"} changed ({weights} weights); '
            f"{kept} of {len(steps)} repair steps kept by validation. Test accuracy: float "
            f"{ch.pct(test.get('float'))}%, quantized {ch.pct(test.get('quantized'))}%, repaired "
            f"<b>{ch.pct(test.get('repaired'))}%</b>.</p>")


def _accuracy(report: RepairReport) -> str:
    rows = []
    for split in SPLITS:
        if split not in report.accuracy:
            continue
        row = report.accuracy[split]
        rows.append([split, ch.num(report.sizes.get(split, "?"))]
                    + [ch.num(ch.pct(row.get(m))) for m in MODELS]
                    + [ch.delta(row.get("repaired"), row.get("quantized"))])
    table = ch.table(["split", ch.num("images")] + [ch.num(f"{m} %") for m in MODELS]
                   + [ch.num("repaired − quantized")], rows)
    chart = ch.svg_grouped([s for s in SPLITS if s in report.accuracy],
                         {m: [report.accuracy[s].get(m, math.nan) for s in SPLITS
                              if s in report.accuracy] for m in MODELS},
                         "accuracy %", group_width=120)
    return ("<h2>Accuracy</h2>\n<p class=\"sub\">Top-1 accuracy in percent. The repair set "
            "drives localization and the LPs, the validation set decides which steps are kept, "
            f"the test set is evaluated only at the end.</p>\n<div class=\"cols\">{table}"
            f"{chart}</div>")


def _ranking(report: RepairReport) -> str:
    metric = _setting_of(report, "localization", "metric")
    head = ("<h2>Where the blame is</h2>\n<p class=\"sub\">How much each neuron is to blame "
            f"by the <code>{ch.e(metric)}</code> score on the repair set. Left: each layer's "
            "share of the positive blame and how many of its neurons the repair changed. "
            "Right: every neuron, one cell each in index order, darker for more blame (scaled "
            "to the largest score), outlined where the repair changed it.</p>")
    if not report.blame:
        if not report.top_neurons:
            return head + "<p>No neuron was ranked.</p>"
        colors = ch.layer_colors([ch.layer(n) for n, _ in report.top_neurons])
        bars = [(n, s, colors[ch.layer(n)]) for n, s in report.top_neurons]
        return head + ch.svg_hbars(bars, list(colors.items()))
    changed: dict[str, set[int]] = {}
    for c in report.changes:
        name, _, index = c["neuron"].rpartition("[")
        changed.setdefault(name, set()).add(int(index.rstrip("]")))
    return head + ch.svg_blame(report.blame, changed)


def _layer_costs(report: RepairReport, top: int = 15) -> str:
    """The per-layer table (`--layer-images`), when the report has it."""
    costs = report.layer_costs
    if not costs:
        return ""
    head = ("<h2>Which layer causes the drop</h2>\n<p class=\"sub\">Per layer, on "
            f"{costs['n_images']} validation images (float {ch.pct(costs['float_accuracy'])}%, "
            f"quantized {ch.pct(costs['quantized_accuracy'])}%): accuracy and KL from the float "
            "model with that layer alone left in float (and the points that gives back), with "
            "it alone quantized, and its share of the blame; the "
            f"{min(top, len(costs['layers']))} layers that give back most.</p>")
    rows = [[layer["layer"], ch.num(ch.pct(layer["float_accuracy"])),
             ch.delta(layer["float_accuracy"], costs["quantized_accuracy"]),
             ch.num(f"{layer['float_kl']:.4f}"), ch.num(ch.pct(layer["quantized_accuracy"])),
             ch.num(f"{layer['quantized_kl']:.4f}"),
             ch.num("n/a" if layer["blame_share"] is None else f"{layer['blame_share']:.3f}")]
            for layer in costs["layers"][:top]]
    return head + ch.table(["layer", ch.num("alone float %"), ch.num("gives back"),
                            ch.num("KL"), ch.num("alone quantized %"), ch.num("KL"),
                            ch.num("blame share")], rows)


def _changes(report: RepairReport) -> str:
    head = ("<h2>Changed neurons</h2>\n<p class=\"sub\">Integer changes kept in the repaired "
            "model, per layer: neurons and weights changed, L1 norm and largest magnitude of "
            "the integer weight deltas, bias deltas in steps of the bias grid. The table of "
            "every neuron is folded below.</p>")
    if not report.changes:
        return head + "<p>No neuron was changed.</p>"
    by_layer: dict[str, list[dict]] = {}
    for c in report.changes:
        by_layer.setdefault(ch.layer(c["neuron"]), []).append(c)
    rows = [[name, ch.num(len(cs)), ch.num(sum(c["weights_changed"] for c in cs)),
             ch.num(sum(c["delta_l1"] for c in cs)), ch.num(max(c["delta_max"] for c in cs)),
             ch.num(sum(abs(c["bias_delta"]) for c in cs))] for name, cs in by_layer.items()]
    summary = ch.table(["layer", ch.num("neurons"), ch.num("weights changed"),
                        ch.num("L1 of deltas"), ch.num("max |delta|"),
                        ch.num("|bias delta| sum")], rows)
    neuron_rows = [[c["neuron"], ch.num(c["weights_changed"]), ch.num(c["delta_l1"]),
                    ch.num(c["delta_max"]), ch.num(f"{c['bias_delta']:+d}"),
                    c.get("status", ""),
                    ch.num(f"{1000 * c.get('solve_seconds', math.nan):.1f}")]
                   for c in report.changes]
    neurons = ch.table(["neuron", ch.num("weights changed"), ch.num("L1 of deltas"),
                        ch.num("max |delta|"), ch.num("bias delta"), "LP status",
                        ch.num("LP ms")], neuron_rows)
    return (head + summary + f"<details><summary>All {len(report.changes)} changed neurons"
            f"</summary>{neurons}</details>")


def _per_class(report: RepairReport) -> str:
    names = list(report.class_names)
    head = ("<h2>Per-class test accuracy</h2>\n<p class=\"sub\">Accuracy in percent on the test "
            "images of each class (n/a: no test image of that class)"
            + (", classes named as the data names them" if names else "") + ".</p>")
    per_class = report.per_class
    if not per_class:
        return head + "<p>Not recorded.</p>"
    n_classes = max(len(v) for v in per_class.values())
    names += [""] * (n_classes - len(names))
    rows = []
    for k in range(n_classes):
        values = {m: per_class.get(m, [])[k] if k < len(per_class.get(m, [])) else math.nan
                  for m in MODELS}
        rows.append([ch.num(k)] + ([names[k]] if any(names) else [])
                    + [ch.num(ch.pct(values[m])) for m in MODELS]
                    + [ch.delta(values["repaired"], values["quantized"])])
    table = ch.table([ch.num("class")] + (["name"] if any(names) else [])
                     + [ch.num(f"{m} %") for m in MODELS]
                     + [ch.num("repaired − quantized")], rows)
    # Axis labels: a short name where one fits under its bars, else the index.
    width = max(12, min(60, 820 // max(n_classes, 1)))
    fits = max(1, width // 7)  # about 7 px a character at 11 px
    labels = [_short(names[k], fits) or str(k) for k in range(n_classes)]
    chart = ch.svg_grouped(labels, {m: list(per_class.get(m, [])) for m in MODELS},
                           "test accuracy %", group_width=width)
    return head + f'<div class="cols">{chart}{table}</div>'


def _short(name: str, fits: int) -> str:
    """`name` up to its first comma ("tench, Tinca tinca" -> "tench") if that fits, else ""."""
    name = name.split(",")[0].strip()
    return name if len(name) <= fits else ""


def _lps(report: RepairReport) -> str:
    times = np.array(report.lp_seconds(), dtype=np.float64)
    sizes = [tuple(s) for step in report.steps for s in step.get("lp_sizes", [])]
    head = (f"<h2>Linear programs</h2>\n<p class=\"sub\">{report.n_lps} LPs solved by HiGHS "
            + (f"(MILP, time limit {ch.e(_setting_of(report, 'lp', 'time_limit'))} s each)"
               if _setting_of(report, "lp", "integer") is True else
               "(LP relaxation + rounding, each solved to the end)") + ". An LP is "
            "solved once and reused by every later step that needs it.</p>")
    if not len(times):
        return head + "<p>No LP was solved.</p>"
    ms = 1000 * times
    stats = ch.table(["", ch.num("min"), ch.num("median"), ch.num("90th pct"), ch.num("max"),
                    ch.num("total")],
                   [["solve time (ms)"] + [ch.num(f"{v:.1f}") for v in (
                       ms.min(), np.median(ms), np.percentile(ms, 90), ms.max(), ms.sum())]]
                   + [[name] + [ch.num(f"{v:g}") for v in (
                       arr.min(), np.median(arr), np.percentile(arr, 90), arr.max())] + [""]
                      for name, arr in (("rows", np.array([s[0] for s in sizes])),
                                        ("columns", np.array([s[1] for s in sizes])))
                      if len(arr)])
    counts = Counter(sizes).most_common()
    size_rows = [[ch.num(f"{r} × {c}"), ch.num(n)] for (r, c), n in counts[:MAX_SIZE_ROWS]]
    if len(counts) > MAX_SIZE_ROWS:
        size_rows.append([f"{len(counts) - MAX_SIZE_ROWS} other sizes",
                          ch.num(sum(n for _, n in counts[MAX_SIZE_ROWS:]))])
    size_table = ch.table([ch.num("rows × columns"), ch.num("LPs")], size_rows)
    return (head + stats + "<h3>Solve-time distribution</h3>" + ch.svg_histogram(ms)
            + "<h3>LP sizes</h3>" + size_table)


def _steps(report: RepairReport) -> str:
    start = report.accuracy.get("validation", {}).get("quantized", math.nan)
    acceptance = report.repair_config.get("acceptance", {})
    min_z = acceptance.get("min_z", 0.0)
    paired = (f" and by at least {min_z:g} standard errors of the per-image drop" if min_z
              else "")
    rule = ("it is kept when it lowers the KL divergence to the float model's soft predictions "
            f"by at least {acceptance.get('min_gain', 0):.0%}{paired} and validation accuracy "
            f"does not drop below the best so far"
            if acceptance.get("criterion", "kl") == "kl" else
            "it is kept when validation accuracy does not drop below the best so far")
    head = ("<h2>Repair steps</h2>\n<p class=\"sub\">Each step repairs the next neurons of the "
            f"ranking; {rule} (start: the quantized model, {ch.pct(start)}%).</p>")
    if not report.steps:
        return head + "<p>No step ran.</p>"
    best = start
    rows = []
    for i, s in enumerate(report.steps, 1):
        sizes = s.get("lp_sizes", [])
        size = (f"{ch.span([r for r, _ in sizes])} × {ch.span([c for _, c in sizes])}"
                if sizes else "all cached")
        kept = "kept" if s["accepted"] else "rejected"
        rows.append([ch.num(i), ch.num(len(s["neurons"])), ch.num(s["n_lps"]), ch.num(size),
                     ch.num(ch.pct(s["validation_accuracy"])),
                     ch.delta(s["validation_accuracy"], best),
                     ch.num(f"{s.get('validation_divergence', math.nan):.4f}"), (kept, kept),
                     ch.num(f"{s.get('seconds', math.nan):.2f}")])
        if s["accepted"]:
            best = s["validation_accuracy"]
    return head + ch.table([ch.num("step"), ch.num("top N neurons"), ch.num("LPs solved"),
                            ch.num("LP rows × columns"), ch.num("validation %"),
                            ch.num("vs best before"), ch.num("validation KL"), "decision",
                            ch.num("seconds")], rows)


def _config(report: RepairReport) -> str:
    run = {"model": report.model, "seed": report.seed,
           **{f"{k} images": v for k, v in report.sizes.items()},
           **{f"time {k} (s)": f"{v:.2f}" for k, v in report.timings.items()}}
    tables = [("Run", run), ("Quantization", report.quant_config),
              ("Repair", _flat(report.repair_config)), ("Versions", report.versions)]
    parts = [f"<div><h3>{title}</h3>"
             + ch.table(["setting", "value"], [[k, ch.value(v)] for k, v in values.items()])
             + "</div>" for title, values in tables]
    return ("<h2>Configuration</h2>\n<p class=\"sub\">Everything that produced this result.</p>"
            f"<div class=\"cols\">{''.join(parts)}</div>")


def _flat(config: dict) -> dict:
    """A nested config as one table: {"lp": {"norm": "l1"}} -> {"lp.norm": "l1"}."""
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv
            for k, v in config.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])}


def _setting_of(report: RepairReport, part: str, key: str):
    """A repair setting from the nested config (or a flat one, as reports before format 2)."""
    config = report.repair_config
    return config.get(part, config).get(key, "?")

