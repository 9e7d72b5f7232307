"""The pieces the HTML report is drawn with: escaped text, tables and inline SVG charts.

SVG rather than matplotlib PNGs because matplotlib is only in the `bench` extra, and a page of
text and vectors stays small and sharp at any zoom. Every string goes through `html.escape`.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np

MODEL_COLORS = {"float": "#8c8c8c", "quantized": "#e07b39", "repaired": "#2f6fb0"}
# tab10: one colour per layer of the ranking, in order of first appearance
LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")
CHART_WIDTH = 900  # px; the page is 1,180 px wide at most


# ---------------------------------------------------------------- tables and text

def e(value) -> str:
    return html.escape(str(value), quote=True)


def layer(neuron: str) -> str:
    """'layer3.2.conv2[17]' -> 'layer3.2.conv2'."""
    return neuron.rpartition("[")[0] or neuron


def layer_colors(layers: list[str]) -> dict[str, str]:
    order = list(dict.fromkeys(layers))
    return {layer: LAYER_COLORS[i % len(LAYER_COLORS)] for i, layer in enumerate(order)}


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def pct(value) -> str:
    return f"{value:.2f}" if finite(value) else "n/a"


def span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def value(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "None" if value is None else str(value)


def num(text) -> tuple[str, str]:
    return str(text), "num"


def delta(new, old) -> tuple[str, str]:
    if not (finite(new) and finite(old)):
        return "n/a", "num"
    d = new - old
    return f"{d:+.2f}", "num up" if d > 0 else "num down" if d < 0 else "num"


def table(header: list, rows: list[list]) -> str:
    """Cells are plain text (escaped here) or (text, css class); ("...", "th") is a header."""
    def cell(value, tag="td") -> str:
        text, cls = value if isinstance(value, tuple) else (value, "")
        if cls == "th":
            tag, cls = "th", ""
        attr = f' class="{cls}"' if cls else ""
        return f"<{tag}{attr}>{e(text)}</{tag}>"
    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


# ---------------------------------------------------------------- SVG charts

def svg(width: float, height: float, content: list[str], label: str) -> str:
    return (f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} '
            f'{height:.0f}" role="img" aria-label="{e(label)}">' + "".join(content) + "</svg>")


def text(x: float, y: float, text, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{e(text)}</text>')


def draw_legend(items: list[tuple[str, str]], x: float, y: float,
            max_x: float = CHART_WIDTH) -> tuple[list[str], float]:
    """Colour swatches with names from (x, y), wrapping at max_x; returns them and the y
    below the last line."""
    out, start = [], x
    for name, color in items:
        step = 24 + 6.5 * len(name)
        if x > start and x + step > max_x:
            x, y = start, y + 16
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(text(x + 14, y, name))
        x += step
    return out, y + 12


def svg_hbars(bars: list[tuple[str, float, str]], legend: list[tuple[str, str]]) -> str:
    """Horizontal bars, one per (label, value, colour), top to bottom; zero line if negative."""
    bar_h, gap, label_w = 15, 4, 150
    out, top = draw_legend(legend, label_w, 14)
    plot_w = CHART_WIDTH - label_w - 80
    shown = [v for _, v, _ in bars if finite(v)] or [0.0]
    lo, hi = min(0.0, min(shown)), max(0.0, max(shown))
    hi = hi if hi > lo else lo + 1.0

    def x(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    height = top + len(bars) * (bar_h + gap) + 8
    out.append(f'<line x1="{x(0):.1f}" y1="{top - 3}" x2="{x(0):.1f}" y2="{height - 6}" '
               'stroke="#999"/>')
    for i, (label, value, color) in enumerate(bars):
        y = top + i * (bar_h + gap)
        out.append(text(label_w - 6, y + 11.5, label, "end"))
        if finite(value):
            x0, x1 = sorted((x(0), x(value)))
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" '
                       f'height="{bar_h}" fill="{color}"><title>{e(label)}: {value:.4g}'
                       "</title></rect>")
            out.append(text(max(x(0), x(value)) + 4, y + 11.5, f"{value:.4g}"))
        else:
            out.append(text(x(0) + 4, y + 11.5, str(value)))
    return svg(CHART_WIDTH, height, out, "suspiciousness of the top neurons")


def svg_grouped(groups: list[str], series: dict[str, list[float]], ylabel: str,
                 group_width: int) -> str:
    """Vertical bars on a 0..100 scale, one group per category, one bar per series."""
    left, top, bottom, plot_h = 44, 26, 30, 190
    width = left + group_width * len(groups) + 16
    width = max(width, 340)
    names = [n for n in series if series[n]]
    bar_w = 0.8 * group_width / max(len(names), 1)
    out, _ = draw_legend([(n, MODEL_COLORS.get(n, "#555")) for n in names], left, 14, width)
    for tick in range(0, 101, 25):
        y = top + plot_h * (1 - tick / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        out.append(text(left - 5, y + 4, tick, "end"))
    out.append(text(12, top + plot_h / 2, ylabel, "middle",
                     f' transform="rotate(-90 12 {top + plot_h / 2:.1f})"'))
    every = max(1, math.ceil(len(groups) / 40))  # at most 40 category labels
    for g, name in enumerate(groups):
        gx = left + g * group_width + 0.1 * group_width
        for s, model in enumerate(names):
            values = series[model]
            value = values[g] if g < len(values) else math.nan
            if not finite(value):
                continue
            h = plot_h * max(0.0, min(value, 100.0)) / 100
            out.append(f'<rect x="{gx + s * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                       f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
                       f'fill="{MODEL_COLORS.get(model, "#555")}"><title>{e(name)} {e(model)}: '
                       f"{value:.2f}%</title></rect>")
        if g % every == 0:
            out.append(text(left + (g + 0.5) * group_width, top + plot_h + 15, name, "middle"))
    return svg(width, top + plot_h + bottom, out, ylabel)


def svg_histogram(ms: np.ndarray) -> str:
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
        out.append(text(left - 5, y + 4, tick, "end"))
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        out.append(f'<rect x="{left + i * bin_w + 0.5:.1f}" y="{top + plot_h - h:.1f}" '
                   f'width="{max(bin_w - 1, 0.5):.1f}" height="{h:.1f}" fill="#2f6fb0">'
                   f"<title>{edges[i]:.3g}–{edges[i + 1]:.3g} ms: {count} LPs</title></rect>")
    every = max(1, math.ceil((len(edges)) / 8))
    for i in range(0, len(edges), every):
        out.append(text(left + i * bin_w, top + plot_h + 14, f"{edges[i]:.3g}", "middle"))
    out.append(text(left + plot_w / 2, top + plot_h + 32,
                     "solve time (ms" + (", log scale)" if log else ")") + "; bar height: LPs",
                     "middle"))
    return svg(left + plot_w + 30, top + plot_h + bottom, out, "LP solve-time histogram")


def svg_blame(blame: dict[str, list[float]], changed: dict[str, set[int]]) -> str:
    """Per layer, a bar of its share of the positive blame with its changed-neuron count, and a
    strip of one cell per neuron shaded by blame (outlined where changed)."""
    label_w, bar_w, gap, row_h = 150, 160, 110, 14  # gap: room for "52% (5/8)" after a bar
    widest = max((len(s) for s in blame.values()), default=1)
    cell = max(0.5, min(8.0, (CHART_WIDTH - label_w - bar_w - gap - 10) / widest))
    positive = {name: float(np.clip(scores, 0, None).sum()) for name, scores in blame.items()}
    total = sum(positive.values()) or 1.0
    peak = max((max(s, default=0.0) for s in blame.values()), default=0.0) or 1.0
    strip_x = label_w + bar_w + gap
    out = [text(label_w, 11, "blame share (changed/all)"),
           text(strip_x, 11, "neurons, darker = more blame")]
    for i, (name, scores) in enumerate(blame.items()):
        y = 18 + i * row_h
        share = positive[name] / total
        out.append(text(label_w - 6, y + 10, name, "end"))
        out.append(f'<rect x="{label_w}" y="{y + 1}" width="{max(bar_w * share, 0.5):.1f}" '
                   f'height="{row_h - 3}" fill="#c0392b"><title>{e(name)}: {share:.1%} of the '
                   "blame</title></rect>")
        n_changed = len(changed.get(name, ()))
        out.append(text(label_w + bar_w * share + 4, y + 10,
                        f"{share:.0%} ({n_changed}/{len(scores)})"))
        for j, score in enumerate(scores):
            level = max(0.0, min(1.0, score / peak))
            fill = f"rgb({255 - int(63 * level)},{255 - int(198 * level)},{255 - int(212 * level)})"
            outline = ' stroke="#1d1d1f" stroke-width="0.8"' if j in changed.get(name, ()) else ""
            out.append(f'<rect x="{strip_x + j * cell:.1f}" y="{y + 1}" width="{cell:.2f}" '
                       f'height="{row_h - 3}" fill="{fill}"{outline}><title>{e(name)}[{j}]: '
                       f"{score:.4g}</title></rect>")
    return svg(CHART_WIDTH, 24 + len(blame) * row_h, out, "blame per layer and per neuron")
