"""Side-by-side benchmark: every method on the same checkpoint, quantizer, images and test set.

For each (model, setting) the RTN model is quantized once, every baseline starts from it (RTN
with MSE clipping is quantized anew), and qnnrepair runs alone and on top of each baseline.
Decisions see only the repair and validation images; the test set is evaluated afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qnnrepair.baselines import get_baseline
from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import accuracy
from qnnrepair.fileio import atomic_path
from qnnrepair.pipeline import Workload
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantConfig, QuantizedModel, quantize
from qnnrepair.repair import Repairer, preset

logger = logging.getLogger(__name__)

SPLITS = ("repair", "validation", "test")
BASELINE_METHODS = ("rtn", "rtn_mse", "bias_correction", "squant", "adaround",
                    "least_squares_last_layer")
REPAIR_METHODS = ("paper", "qnnrepair")


@dataclass(frozen=True)
class BenchConfig:
    """What to run for each (model, setting). `on_top` lists the baselines that qnnrepair is
    also applied after."""

    methods: tuple[str, ...] = BASELINE_METHODS + REPAIR_METHODS
    on_top: tuple[str, ...] = ("bias_correction", "squant", "adaround")
    adaround_iters: int = 1000
    repair_preset: str = "default"
    seed: int = 0
    baseline_params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class BenchRecord:
    """The rows of one bench run, kept in <stem>.json and rewritten with the Markdown table and
    the plot after every (model, setting), so that a long run can be split into invocations:
    each skips the pieces it finds. `key` (config and splits) must match the file's."""

    def __init__(self, stem: Path, key: dict, fresh: bool = False) -> None:
        self.stem, self.key = stem, json.loads(json.dumps(key))  # tuples read back as lists
        self.rows: list[dict] = []
        self.pieces: list[dict] = []
        path = stem.with_suffix(".json")
        if fresh or not path.exists():
            return
        saved = json.loads(path.read_text())
        if saved["meta"].get("key") != self.key:
            raise QnnRepairError(f"{path} holds a bench run with other settings; pass --fresh "
                                 "to start it again or --name for a new file")
        self.rows, self.pieces = saved["rows"], saved["meta"]["pieces"]

    @classmethod
    def merged(cls, paths: list[Path], stem: Path) -> BenchRecord:
        """One record from runs split over processes or machines (each its own file): same key,
        no (model, setting) twice. The inputs are read, never written."""
        if stem.with_suffix(".json").resolve() in {p.resolve() for p in paths}:
            raise QnnRepairError(f"--merge would overwrite its input {stem}.json; pick another "
                                 "--name")
        saved = [_read_run(path) for path in paths]
        record = cls(stem, saved[0]["meta"]["key"], fresh=True)
        for path, run in zip(paths, saved):
            if run["meta"]["key"] != record.key:
                raise QnnRepairError(f"{path} ran with other settings than {paths[0]}; only runs "
                                     "of the same config, seed and sizes merge")
            clash = next((r for r in run["rows"] if record.done(r["model"], r["setting"])), None)
            if clash:
                raise QnnRepairError(f"{path} repeats {clash['model']} {clash['setting']}; "
                                     "merge runs of different (model, setting) pieces")
            record.rows += run["rows"]
            record.pieces += run["meta"]["pieces"]
        return record

    def done(self, model: str, setting: str) -> bool:
        return any(r["model"] == model and r["setting"] == setting for r in self.rows)

    def add(self, rows: list[dict], piece: dict) -> None:
        """Append one (model, setting)'s rows; `piece` is this invocation's command and clock,
        replaced as the invocation goes on."""
        self.rows += rows
        if not self.pieces or self.pieces[-1] is not piece:
            self.pieces.append(piece)
        self.write()

    def meta(self) -> dict:
        return {"key": self.key, "pieces": self.pieces,
                "wall_s": sum(p["wall_s"] for p in self.pieces)}

    def write(self) -> None:
        meta = self.meta()
        with atomic_path(self.stem.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=1))
        with atomic_path(self.stem.with_suffix(".md")) as tmp:
            tmp.write_text(render_markdown(self.rows, meta))
        with atomic_path(self.stem.with_suffix(".png")) as tmp:
            plot(self.rows, tmp)


def _read_run(path: Path) -> dict:
    """A bench .json file, checked for the parts that merging uses."""
    hint = "--merge takes the .json files that bench wrote"
    try:
        run = json.loads(path.read_text())
    except OSError as err:
        raise QnnRepairError(f"cannot read {path} ({err.strerror}); {hint}") from None
    except ValueError:
        run = None
    meta = run.get("meta") if isinstance(run, dict) else None
    if not (isinstance(meta, dict) and {"key", "pieces"} <= meta.keys() and "rows" in run):
        raise QnnRepairError(f"{path} is not a bench results file; {hint}")
    return run


class _Clock:
    """Wall and CPU seconds (threads and finished worker processes) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _accuracies(model, work: Workload) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in SPLITS}


def run_setting(work: Workload, setting: str, config: BenchConfig,
                show_progress: bool = False) -> list[dict]:
    """All methods for one model and one quantization setting; one row per method."""
    rows: list[dict] = []
    images = work.images("repair")
    with _Clock() as clock:
        rtn = quantize(work.model, QuantConfig.from_setting(setting), images,
                       model_spec=work.model_spec, seed=config.seed)
    base_cpu = clock.cpu
    float_acc = _accuracies(rtn.float_model, work)
    finished: dict[str, tuple[QuantizedModel, float]] = {}

    def add(method: str, model: QuantizedModel, clock: _Clock, extra_cpu: float = 0.0) -> None:
        rows.append({"model": work.model_spec, "setting": setting, "method": method,
                     "float": float_acc, "result": _accuracies(model.model, work),
                     "cpu_s": clock.cpu + extra_cpu, "wall_s": clock.wall})
        logger.info("%s %s %s: test %.2f%%", work.model_spec, setting, method,
                    rows[-1]["result"]["test"])

    for method in progress(config.methods, show_progress, desc=f"{work.model_spec} {setting}"):
        with _Clock() as clock:
            model = _run_method(method, rtn, work, setting, config)
        add(method, model, clock, extra_cpu=base_cpu)
        finished[method] = (model, clock.cpu + base_cpu)
    for baseline in config.on_top:
        if baseline not in finished:
            continue
        model, cpu = finished[baseline]
        with _Clock() as clock:
            repaired = _repair(model, work, config)
        add(f"{baseline}+qnnrepair", repaired, clock, extra_cpu=cpu)
    return rows


def _run_method(method: str, rtn: QuantizedModel, work: Workload, setting: str,
                config: BenchConfig) -> QuantizedModel:
    images = work.images("repair")
    if method == "rtn_mse":
        return quantize(work.model, QuantConfig.from_setting(setting, weight_clipping="mse"),
                        images, model_spec=work.model_spec, seed=config.seed)
    if method == "qnnrepair":
        return _repair(rtn, work, config)
    if method == "paper":
        return _repair(rtn, work, replace(config, repair_preset="paper"))
    params = dict(config.baseline_params.get(method, {}))
    if method == "adaround":
        params.setdefault("iters", config.adaround_iters)
    return get_baseline(method)(rtn, images, seed=config.seed, **params)


def _repair(model: QuantizedModel, work: Workload, config: BenchConfig) -> QuantizedModel:
    repairer = Repairer(preset(config.repair_preset, seed=config.seed)).fit(
        model, work.images("repair"), work.labels("repair"), work.images("validation"),
        work.labels("validation"))
    return repairer.repaired_


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
    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        settings = list(dict.fromkeys(r["setting"] for r in sub))
        methods = list(dict.fromkeys(r["method"] for r in sub))
        cell = {(r["method"], r["setting"]): r for r in sub}
        floats = {s: next(r["float"]["test"] for r in sub if r["setting"] == s)
                  for s in settings}
        out += [f"## {model}: test accuracy (CPU seconds)", "",
                "| method | " + " | ".join(s.upper() for s in settings) + " |",
                "|---|" + "---|" * len(settings),
                "| float | " + " | ".join(f"{floats[s]:.2f}" for s in settings) + " |"]
        for m in methods:
            vals = [f"{cell[m, s]['result']['test']:.2f} ({cell[m, s]['cpu_s']:.0f})"
                    if (m, s) in cell else "-" for s in settings]
            out.append(f"| {m} | " + " | ".join(vals) + " |")
        out += ["", f"### {model}: every split", "",
                "| setting | method | repair | validation | test | CPU s | wall s |",
                "|---|---|---|---|---|---|---|"]
        for r in sub:
            a = r["result"]
            out.append(f"| {r['setting']} | {r['method']} | {a['repair']:.2f} | "
                       f"{a['validation']:.2f} | {a['test']:.2f} | {r['cpu_s']:.1f} | "
                       f"{r['wall_s']:.1f} |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path) -> None:
    """Test accuracy per method per setting, and test accuracy against CPU time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(14, 4.5 * len(models)), squeeze=False)
    for (bars, scatter), model in zip(axes, models):
        sub = [r for r in rows if r["model"] == model]
        settings = list(dict.fromkeys(r["setting"] for r in sub))
        methods = list(dict.fromkeys(r["method"] for r in sub))
        width = 0.8 / len(methods)
        colors = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10
        for i, m in enumerate(methods):
            color = colors[i % len(colors)]
            ys = [next((r["result"]["test"] for r in sub if r["method"] == m
                        and r["setting"] == s), float("nan")) for s in settings]
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
        scatter.set_xscale("log")
        scatter.set_xlabel("CPU seconds (log)")
        scatter.set_ylabel("test accuracy %")
        scatter.set_title(f"{model}: accuracy against CPU time (all settings)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.14 / len(models), 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
