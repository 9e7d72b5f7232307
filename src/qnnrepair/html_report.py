"""A RepairReport as one self-contained HTML page: `render_html(report) -> str`.

Everything is inline: the CSS in a <style> element and the plots as SVG drawn here, so the
file opens anywhere, offline, and every number in it is text. SVG rather than matplotlib
PNGs because matplotlib is only in the `bench` extra, and a page of text and vectors stays
small and sharp at any zoom. No script: nothing to run, nothing to fail. Every string that
comes from the report (model spec, layer names, config values) goes through `html.escape`.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter

import numpy as np

from qnnrepair.report import MODELS, SPLITS, RepairReport

__all__ = ["render_html"]

MODEL_COLORS = {"float": "#8c8c8c", "quantized": "#e07b39", "repaired": "#2f6fb0"}
# tab10: one colour per layer of the ranking, in order of first appearance
LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")
CHART_WIDTH = 900  # px; the page is 1,180 px wide at most
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
    title = (f"qnnrepair report: {report.model}, {_setting(report)}, seed {report.seed}")
    body = [f"<h1>{_e(title)}</h1>", _summary(report), _accuracy(report), _ranking(report),
            _changes(report), _per_class(report), _lps(report), _steps(report), _config(report)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- sections

def _summary(report: RepairReport) -> str:
    acc, steps = report.accuracy, report.steps
    val = acc.get("validation", {})
    test = acc.get("test", {})
    if not steps:
        if val.get("quantized", math.nan) >= val.get("float", math.nan):
            why = (f"the quantized model is already as accurate as the float model on the "
                   f"validation set ({_pct(val.get('quantized'))}% vs "
                   f"{_pct(val.get('float'))}%)")
        else:
            why = "no repair step ran (time budget spent or no neuron to repair)"
        return (f'<p class="note none"><b>Nothing to repair:</b> {_e(why)}; the repaired model '
                "is the quantized model, unchanged.</p>")
    kept = sum(s["accepted"] for s in steps)
    weights = sum(c["weights_changed"] for c in report.changes)
    n = len(report.changes)
    return (f'<p class="note">{n} neuron{"" if n == 1 else "s"} changed ({weights} weights); '
            f"{kept} of {len(steps)} repair steps kept by validation. Test accuracy: float "
            f"{_pct(test.get('float'))}%, quantized {_pct(test.get('quantized'))}%, repaired "
            f"<b>{_pct(test.get('repaired'))}%</b>.</p>")


def _accuracy(report: RepairReport) -> str:
    rows = []
    for split in SPLITS:
        if split not in report.accuracy:
            continue
        row = report.accuracy[split]
        rows.append([split, _num(report.sizes.get(split, "?"))]
                    + [_num(_pct(row.get(m))) for m in MODELS]
                    + [_delta(row.get("repaired"), row.get("quantized"))])
    table = _table(["split", _num("images")] + [_num(f"{m} %") for m in MODELS]
                   + [_num("repaired − quantized")], rows)
    chart = _svg_grouped([s for s in SPLITS if s in report.accuracy],
                         {m: [report.accuracy[s].get(m, math.nan) for s in SPLITS
                              if s in report.accuracy] for m in MODELS},
                         "accuracy %", group_width=120)
    return ("<h2>Accuracy</h2>\n<p class=\"sub\">Top-1 accuracy in percent. The repair set "
            "drives localization and the LPs, the validation set decides which steps are kept, "
            f"the test set is evaluated only at the end.</p>\n<div class=\"cols\">{table}"
            f"{chart}</div>")


def _ranking(report: RepairReport) -> str:
    head = (f"<h2>Suspiciousness ranking</h2>\n<p class=\"sub\">Top {len(report.top_neurons)} "
            f"neurons by the <code>{_e(report.repair_config['localization']['metric'])}</code> "
            "score "
            "on the repair set, most suspicious first, coloured by layer.</p>")
    if not report.top_neurons:
        return head + "<p>No neuron was ranked.</p>"
    colors = _layer_colors([_layer(n) for n, _ in report.top_neurons])
    bars = [(n, s, colors[_layer(n)]) for n, s in report.top_neurons]
    legend = [(layer, color) for layer, color in colors.items()]
    return head + _svg_hbars(bars, legend)


def _changes(report: RepairReport) -> str:
    head = ("<h2>Changed neurons</h2>\n<p class=\"sub\">Integer changes kept in the repaired "
            "model: weights changed, L1 norm and largest magnitude of the integer weight deltas, "
            "bias delta in steps of the bias grid, status and time of the LP that chose them.</p>")
    if not report.changes:
        return head + "<p>No neuron was changed.</p>"
    rows = [[c["neuron"], _layer(c["neuron"]), _num(c["weights_changed"]), _num(c["delta_l1"]),
             _num(c["delta_max"]), _num(f"{c['bias_delta']:+d}"), c.get("status", ""),
             _num(f"{1000 * c.get('solve_seconds', math.nan):.1f}")] for c in report.changes]
    rows.append([("total", "th"), "", _num(sum(c["weights_changed"] for c in report.changes)),
                 _num(sum(c["delta_l1"] for c in report.changes)),
                 _num(max(c["delta_max"] for c in report.changes)),
                 _num(f"{sum(abs(c['bias_delta']) for c in report.changes)} (abs)"), "", ""])
    return head + _table(["neuron", "layer", _num("weights changed"), _num("L1 of deltas"),
                          _num("max |delta|"), _num("bias delta"), "LP status",
                          _num("LP ms")], rows)


def _per_class(report: RepairReport) -> str:
    head = ("<h2>Per-class test accuracy</h2>\n<p class=\"sub\">Accuracy in percent on the test "
            "images of each class (n/a: no test image of that class).</p>")
    per_class = report.per_class
    if not per_class:
        return head + "<p>Not recorded.</p>"
    n_classes = max(len(v) for v in per_class.values())
    rows = []
    for k in range(n_classes):
        values = {m: per_class.get(m, [])[k] if k < len(per_class.get(m, [])) else math.nan
                  for m in MODELS}
        rows.append([_num(k)] + [_num(_pct(values[m])) for m in MODELS]
                    + [_delta(values["repaired"], values["quantized"])])
    table = _table([_num("class")] + [_num(f"{m} %") for m in MODELS]
                   + [_num("repaired − quantized")], rows)
    chart = _svg_grouped([str(k) for k in range(n_classes)],
                         {m: list(per_class.get(m, [])) for m in MODELS}, "test accuracy %",
                         group_width=max(12, min(60, 820 // max(n_classes, 1))))
    return head + f'<div class="cols">{chart}{table}</div>'


def _lps(report: RepairReport) -> str:
    times = np.array(report.lp_seconds(), dtype=np.float64)
    sizes = [tuple(s) for step in report.steps for s in step.get("lp_sizes", [])]
    head = (f"<h2>Linear programs</h2>\n<p class=\"sub\">{report.n_lps} LPs solved by HiGHS "
            f"({'MILP' if report.repair_config['lp']['integer'] else 'LP relaxation + rounding'}"
            f", time limit {_e(report.repair_config['lp']['time_limit'])} s each). An LP is "
            "solved once and reused by every later step that needs it.</p>")
    if not len(times):
        return head + "<p>No LP was solved.</p>"
    ms = 1000 * times
    stats = _table(["", _num("min"), _num("median"), _num("90th pct"), _num("max"),
                    _num("total")],
                   [["solve time (ms)"] + [_num(f"{v:.1f}") for v in (
                       ms.min(), np.median(ms), np.percentile(ms, 90), ms.max(), ms.sum())]]
                   + [[name] + [_num(f"{v:g}") for v in (
                       arr.min(), np.median(arr), np.percentile(arr, 90), arr.max())] + [""]
                      for name, arr in (("rows", np.array([s[0] for s in sizes])),
                                        ("columns", np.array([s[1] for s in sizes])))
                      if len(arr)])
    counts = Counter(sizes).most_common()
    size_rows = [[_num(f"{r} × {c}"), _num(n)] for (r, c), n in counts[:MAX_SIZE_ROWS]]
    if len(counts) > MAX_SIZE_ROWS:
        size_rows.append([f"{len(counts) - MAX_SIZE_ROWS} other sizes",
                          _num(sum(n for _, n in counts[MAX_SIZE_ROWS:]))])
    size_table = _table([_num("rows × columns"), _num("LPs")], size_rows)
    return (head + stats + "<h3>Solve-time distribution</h3>" + _svg_histogram(ms)
            + "<h3>LP sizes</h3>" + size_table)


def _steps(report: RepairReport) -> str:
    start = report.accuracy.get("validation", {}).get("quantized", math.nan)
    head = ("<h2>Repair steps</h2>\n<p class=\"sub\">Step N repairs the top N neurons of the "
            "ranking; it is kept when validation accuracy does not drop below the best so far "
            f"(start: the quantized model, {_pct(start)}%).</p>")
    if not report.steps:
        return head + "<p>No step ran.</p>"
    best = start
    rows = []
    for i, s in enumerate(report.steps, 1):
        sizes = s.get("lp_sizes", [])
        size = (f"{_span([r for r, _ in sizes])} × {_span([c for _, c in sizes])}"
                if sizes else "all cached")
        kept = "kept" if s["accepted"] else "rejected"
        rows.append([_num(i), _num(len(s["neurons"])), _num(s["n_lps"]), _num(size),
                     _num(_pct(s["validation_accuracy"])),
                     _delta(s["validation_accuracy"], best), (kept, kept),
                     _num(f"{s.get('seconds', math.nan):.2f}")])
        if s["accepted"]:
            best = s["validation_accuracy"]
    return head + _table([_num("step"), _num("N neurons"), _num("LPs solved"),
                          _num("LP rows × columns"), _num("validation %"),
                          _num("vs best before"), "decision", _num("seconds")], rows)


def _config(report: RepairReport) -> str:
    run = {"model": report.model, "seed": report.seed,
           **{f"{k} images": v for k, v in report.sizes.items()},
           **{f"time {k} (s)": f"{v:.2f}" for k, v in report.timings.items()}}
    tables = [("Run", run), ("Quantization", report.quant_config),
              ("Repair", _flat(report.repair_config)), ("Versions", report.versions)]
    parts = [f"<div><h3>{title}</h3>"
             + _table(["setting", "value"], [[k, _value(v)] for k, v in values.items()])
             + "</div>" for title, values in tables]
    return ("<h2>Configuration</h2>\n<p class=\"sub\">Everything that produced this result.</p>"
            f"<div class=\"cols\">{''.join(parts)}</div>")


def _flat(config: dict) -> dict:
    """A nested config as one table: {"lp": {"norm": "l1"}} -> {"lp.norm": "l1"}."""
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv
            for k, v in config.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])}


# ---------------------------------------------------------------- tables and text

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _setting(report: RepairReport) -> str:
    q = report.quant_config
    return f"w{q.get('weight_bits', '?')}a{q.get('act_bits', '?')}"


def _layer(neuron: str) -> str:
    """'layer3.2.conv2[17]' -> 'layer3.2.conv2'."""
    return neuron.rpartition("[")[0] or neuron


def _layer_colors(layers: list[str]) -> dict[str, str]:
    order = list(dict.fromkeys(layers))
    return {layer: LAYER_COLORS[i % len(LAYER_COLORS)] for i, layer in enumerate(order)}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _pct(value) -> str:
    return f"{value:.2f}" if _finite(value) else "n/a"


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _value(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "None" if value is None else str(value)


def _num(text) -> tuple[str, str]:
    return str(text), "num"


def _delta(new, old) -> tuple[str, str]:
    if not (_finite(new) and _finite(old)):
        return "n/a", "num"
    d = new - old
    return f"{d:+.2f}", "num up" if d > 0 else "num down" if d < 0 else "num"


def _table(header: list, rows: list[list]) -> str:
    """Cells are plain text (escaped here) or (text, css class); ("...", "th") is a header."""
    def cell(value, tag="td") -> str:
        text, cls = value if isinstance(value, tuple) else (value, "")
        if cls == "th":
            tag, cls = "th", ""
        attr = f' class="{cls}"' if cls else ""
        return f"<{tag}{attr}>{_e(text)}</{tag}>"
    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


# ---------------------------------------------------------------- SVG charts

def _svg(width: float, height: float, content: list[str], label: str) -> str:
    return (f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} '
            f'{height:.0f}" role="img" aria-label="{_e(label)}">' + "".join(content) + "</svg>")


def _text(x: float, y: float, text, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{_e(text)}</text>')


def _legend(items: list[tuple[str, str]], x: float, y: float,
            max_x: float = CHART_WIDTH) -> tuple[list[str], float]:
    """Colour swatches with names from (x, y), wrapping at max_x; returns them and the y
    below the last line."""
    out, start = [], x
    for name, color in items:
        step = 24 + 6.5 * len(name)
        if x > start and x + step > max_x:
            x, y = start, y + 16
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(_text(x + 14, y, name))
        x += step
    return out, y + 12


def _svg_hbars(bars: list[tuple[str, float, str]], legend: list[tuple[str, str]]) -> str:
    """Horizontal bars, one per (label, value, colour), top to bottom; zero line if negative."""
    bar_h, gap, label_w = 15, 4, 150
    out, top = _legend(legend, label_w, 14)
    plot_w = CHART_WIDTH - label_w - 80
    finite = [v for _, v, _ in bars if _finite(v)] or [0.0]
    lo, hi = min(0.0, min(finite)), max(0.0, max(finite))
    hi = hi if hi > lo else lo + 1.0

    def x(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    height = top + len(bars) * (bar_h + gap) + 8
    out.append(f'<line x1="{x(0):.1f}" y1="{top - 3}" x2="{x(0):.1f}" y2="{height - 6}" '
               'stroke="#999"/>')
    for i, (label, value, color) in enumerate(bars):
        y = top + i * (bar_h + gap)
        out.append(_text(label_w - 6, y + 11.5, label, "end"))
        if _finite(value):
            x0, x1 = sorted((x(0), x(value)))
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" '
                       f'height="{bar_h}" fill="{color}"><title>{_e(label)}: {value:.4g}'
                       "</title></rect>")
            out.append(_text(max(x(0), x(value)) + 4, y + 11.5, f"{value:.4g}"))
        else:
            out.append(_text(x(0) + 4, y + 11.5, str(value)))
    return _svg(CHART_WIDTH, height, out, "suspiciousness of the top neurons")


def _svg_grouped(groups: list[str], series: dict[str, list[float]], ylabel: str,
                 group_width: int) -> str:
    """Vertical bars on a 0..100 scale, one group per category, one bar per series."""
    left, top, bottom, plot_h = 44, 26, 30, 190
    width = left + group_width * len(groups) + 16
    width = max(width, 340)
    names = [n for n in series if series[n]]
    bar_w = 0.8 * group_width / max(len(names), 1)
    out, _ = _legend([(n, MODEL_COLORS.get(n, "#555")) for n in names], left, 14, width)
    for tick in range(0, 101, 25):
        y = top + plot_h * (1 - tick / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        out.append(_text(left - 5, y + 4, tick, "end"))
    out.append(_text(12, top + plot_h / 2, ylabel, "middle",
                     f' transform="rotate(-90 12 {top + plot_h / 2:.1f})"'))
    every = max(1, math.ceil(len(groups) / 40))  # at most 40 category labels
    for g, name in enumerate(groups):
        gx = left + g * group_width + 0.1 * group_width
        for s, model in enumerate(names):
            values = series[model]
            value = values[g] if g < len(values) else math.nan
            if not _finite(value):
                continue
            h = plot_h * max(0.0, min(value, 100.0)) / 100
            out.append(f'<rect x="{gx + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                       f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
                       f'fill="{MODEL_COLORS.get(model, "#555")}"><title>{_e(name)} {_e(model)}: '
                       f"{value:.2f}%</title></rect>")
        if g % every == 0:
            out.append(_text(left + (g + 0.5) * group_width, top + plot_h + 15, name, "middle"))
    return _svg(width, top + plot_h + bottom, out, ylabel)


def _svg_histogram(ms: np.ndarray) -> str:
    """Histogram of LP solve times in ms; log-spaced bins when they span over two decades."""
    left, top, bottom, plot_w, plot_h = 50, 12, 40, CHART_WIDTH - 80, 170
    positive = ms[ms > 0]
    log = len(positive) == len(ms) and positive.max() / positive.min() > 100
    n_bins = int(min(30, max(5, math.ceil(math.sqrt(len(ms))))))
    if log:
        edges = np.geomspace(positive.min(), positive.max(), n_bins + 1)
    elif ms.max() > ms.min():
        edges = np.linspace(ms.min(), ms.max(), n_bins + 1)
    else:
        edges = np.array([ms.min() - 0.5, ms.max() + 0.5])
    counts, edges = np.histogram(ms, bins=edges)
    peak = max(int(counts.max()), 1)
    bin_w = plot_w / len(counts)
    out = []
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h * (1 - tick / peak)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        out.append(_text(left - 5, y + 4, tick, "end"))
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        out.append(f'<rect x="{left + i * bin_w + 0.5:.1f}" y="{top + plot_h - h:.1f}" '
                   f'width="{max(bin_w - 1, 0.5):.1f}" height="{h:.1f}" fill="#2f6fb0">'
                   f"<title>{edges[i]:.3g}–{edges[i + 1]:.3g} ms: {count} LPs</title></rect>")
    every = max(1, math.ceil((len(edges)) / 8))
    for i in range(0, len(edges), every):
        out.append(_text(left + i * bin_w, top + plot_h + 14, f"{edges[i]:.3g}", "middle"))
    out.append(_text(left + plot_w / 2, top + plot_h + 32,
                     "solve time (ms" + (", log scale)" if log else ")") + "; bar height: LPs",
                     "middle"))
    return _svg(left + plot_w + 30, top + plot_h + bottom, out, "LP solve-time histogram")
