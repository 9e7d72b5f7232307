"""Rendering a bench run's rows: the Markdown table and the PNG plot, both drawn from the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Iterator


def _by_model(rows: list[dict]) -> Iterator[tuple[str, list[dict], list[str], list[str]]]:
    """(model, its rows, its settings, its methods) per model, each in first-seen order."""
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        yield (model, sub, list(dict.fromkeys(r["setting"] for r in sub)),
               list(dict.fromkeys(r["method"] for r in sub)))


def render_markdown(rows: list[dict], meta: dict) -> str:
    """Summary (test accuracy per method and setting) and the full table per model."""
    key = meta["key"]
    out = ["# Side-by-side benchmark", "",
           f"Wall time summed over {len(meta['pieces'])} invocation(s): {meta['wall_s']:.0f} s "
           "(invocations run side by side overlap; each skipped the (model, setting) pieces "
           "already done):", ""]
    out += [f"- `{p['command']}` ({p['wall_s']:.0f} s: {', '.join(p['done'])}) on "
            f"{p['machine']}" for p in meta["pieces"]]
    out += ["", f"Splits: {key['sizes']}, seed {key['seed']}; AdaRound "
            f"{key['config']['adaround_iters']} iterations per layer. Per-channel weights, first "
            "and last layer at 8 bits, min-max activation ranges; every method starts from the "
            "same RTN model (rtn_mse is quantized anew with MSE clipping). CPU seconds include "
            "the quantization and, for X+qnnrepair, the baseline X. Accuracies in %.", ""]
    seeded = any("seed" in r for r in rows)
    if seeded:
        out += ["Each (model, setting) ran once per seed of the splits (repair, validation and "
                "test drawn anew); a cell is the mean test accuracy [lowest, highest] over the "
                "seeds, with the median CPU seconds.", ""]
    for model, sub, settings, methods in _by_model(rows):
        cells: dict[tuple[str, str], list[dict]] = {}
        for r in sub:
            cells.setdefault((r["method"], r["setting"]), []).append(r)
        firsts = {s: next(r["method"] for r in sub if r["setting"] == s) for s in settings}
        floats = {s: [r["float"]["test"] for r in sub if r["setting"] == s  # one per seed
                      and r["method"] == firsts[s]] for s in settings}
        out += [f"## {model}: test accuracy (CPU seconds)", "",
                "| method | " + " | ".join(s.upper() for s in settings) + " |",
                "|---|" + "---|" * len(settings),
                "| float | " + " | ".join(_spread(floats[s]) for s in settings) + " |"]
        for m in methods:
            vals = [_cell(cells[m, s]) if (m, s) in cells else "-" for s in settings]
            out.append(f"| {m} | " + " | ".join(vals) + " |")
        seed_col = ("seed | ", "---|") if seeded else ("", "")
        out += ["", f"### {model}: every split", "",
                f"| setting | {seed_col[0]}method | repair | validation | test | CPU s | wall s |",
                f"|---|{seed_col[1]}---|---|---|---|---|---|"]
        for r in sub:
            a = r["result"]
            seed = f"{r.get('seed', '-')} | " if seeded else ""
            out.append(f"| {r['setting']} | {seed}{r['method']} | {a['repair']:.2f} | "
                       f"{a['validation']:.2f} | {a['test']:.2f} | {r['cpu_s']:.1f} | "
                       f"{r['wall_s']:.1f} |")
        out.append("")
    return "\n".join(out) + "\n"


def _spread(values: list[float]) -> str:
    """One value as it is; several (one per seed) as mean [lowest, highest]."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def _cell(rows: list[dict]) -> str:
    """Test accuracy (CPU seconds) of one method and setting, over its seeds."""
    return (f"{_spread([r['result']['test'] for r in rows])} "
            f"({statistics.median(r['cpu_s'] for r in rows):.0f})")


def plot(rows: list[dict], path) -> None:
    """Test accuracy per method per setting, and test accuracy against CPU time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(_by_model(rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(14, 4.5 * len(groups)), squeeze=False)
    colors = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10
    for (bars, scatter), (model, sub, settings, methods) in zip(axes, groups):
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            color = colors[i % len(colors)]
            ys = [statistics.fmean([r["result"]["test"] for r in sub if r["method"] == m
                                    and r["setting"] == s] or [float("nan")])
                  for s in settings]  # the mean over seeds where several ran
            bars.bar([j + i * width for j in range(len(settings))], ys, width, label=m,
                     color=color)
            pts = [r for r in sub if r["method"] == m]
            scatter.scatter([r["cpu_s"] for r in pts], [r["result"]["test"] for r in pts],
                            label=m, s=25, color=color)
        lows = [r["result"]["test"] for r in sub]
        bars.set_ylim(max(0, min(lows) - 3), max(r["float"]["test"] for r in sub) + 1)
        bars.set_xticks([j + 0.4 - width / 2 for j in range(len(settings))],
                        [s.upper() for s in settings])
        bars.set_ylabel("test accuracy %")
        bars.set_title(f"{model}: test accuracy per method")
        positive = any(r["cpu_s"] > 0 for r in sub)  # a tiny run can time every method at 0
        scatter.set_xscale("log" if positive else "linear")
        scatter.set_xlabel("CPU seconds (log)" if positive else "CPU seconds")
        scatter.set_ylabel("test accuracy %")
        scatter.set_title(f"{model}: accuracy against CPU time (all settings)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.14 / len(groups), 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
