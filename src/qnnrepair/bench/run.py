"""Running the bench: every method of one (model, setting), and the loop over them all.

For each (model, setting) the RTN model is quantized once and every method starts from it (each
method decides what it does with it: RTN with MSE clipping quantizes anew), and qnnrepair also
runs on top of each `on_top` method. Decisions see only the repair and validation images; the
test set is evaluated afterwards.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

from qnnrepair.bench.config import BenchConfig
from qnnrepair.bench.methods import ON_TOP, get_method
from qnnrepair.bench.record import BenchRecord
from qnnrepair.data.splits import SPLIT_NAMES
from qnnrepair.evaluation import accuracy
from qnnrepair.pipeline import Workload
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantConfig, QuantizedModel, quantize

logger = logging.getLogger(__name__)

SPLITS = SPLIT_NAMES


class Clock:
    """Wall and CPU seconds (all threads, and worker processes once their pool has closed) of
    a block: the clock of the bench and of every benchmark script."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _accuracies(model, work: Workload) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in SPLITS}


def run_setting(work: Workload, setting: str, config: BenchConfig,
                show_progress: bool = False) -> list[dict]:
    """All methods for one model and one quantization setting; one row per method, then one per
    `on_top` method that ran, repaired after it."""
    rows: list[dict] = []
    with Clock() as clock:
        rtn = quantize(work.model, QuantConfig.from_setting(setting), work.images("repair"),
                       model_spec=work.model_spec, seed=config.seed)
    base_cpu = clock.cpu
    float_acc = _accuracies(rtn.float_model, work)
    finished: dict[str, tuple[QuantizedModel, float]] = {}

    def add(name: str, model: QuantizedModel, clock: Clock, extra_cpu: float) -> None:
        rows.append({"model": work.model_spec, "setting": setting, "method": name,
                     "float": float_acc, "result": _accuracies(model.model, work),
                     "cpu_s": clock.cpu + extra_cpu, "wall_s": clock.wall})
        logger.info("%s %s %s: test %.2f%%", work.model_spec, setting, name,
                    rows[-1]["result"]["test"])

    for name in progress(config.methods, show_progress, desc=f"{work.model_spec} {setting}"):
        method = get_method(name)
        logger.info("%s %s: %s (%s)", work.model_spec, setting, name, method.label)
        with Clock() as clock:
            model = method.run(rtn, work, setting, config)
        add(name, model, clock, extra_cpu=base_cpu)
        finished[name] = (model, clock.cpu + base_cpu)
    stacked = get_method(ON_TOP)
    for name in config.on_top:
        if name not in finished:
            continue
        model, cpu = finished[name]
        with Clock() as clock:
            repaired = stacked.run(model, work, setting, config)
        add(f"{name}+{stacked.name}", repaired, clock, extra_cpu=cpu)
    return rows


def run_bench(record: BenchRecord, workloads: Iterable[tuple[str, Callable[[], Workload]]],
              settings: Iterable[str], config: BenchConfig, piece: dict,
              show_progress: bool = False) -> Iterator[tuple[str, str, list[dict]]]:
    """Every (model, setting) that `record` does not hold yet, each model's workload loaded (by
    calling it) only when one of its settings is left. After each piece its rows are added to
    `record` (which rewrites its files) and yielded as (model, setting, rows); `piece` (this
    invocation's "command", "machine", "wall_s" and "done") is updated as it goes."""
    settings = tuple(settings)
    start = time.perf_counter()
    for model, load in workloads:
        todo = [s for s in settings if not record.done(model, s)]
        if not todo:
            continue
        work = load()
        for setting in todo:
            rows = run_setting(work, setting, config, show_progress=show_progress)
            piece["done"].append(f"{model} {setting}")
            piece["wall_s"] = time.perf_counter() - start
            record.add(rows, piece)
            yield model, setting, rows
