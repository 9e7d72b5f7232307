"""Side-by-side benchmark: every method on the same checkpoint, quantizer, images and test set.

    methods   the registry of bench methods (baselines and repairs alike), `register_method`
    config    BenchConfig: which methods run, and which get qnnrepair on top
    run       run_setting (one model, one setting) and run_bench (the loop over them all)
    record    BenchRecord: the rows in <stem>.json, resumed and merged
    render    the Markdown table and the plot, drawn from the rows
"""

from qnnrepair.bench.config import BASELINE_METHODS, REPAIR_METHODS, BenchConfig
from qnnrepair.bench.methods import (
    METHODS,
    ON_TOP,
    BenchMethod,
    baseline_method,
    get_method,
    register_method,
)
from qnnrepair.bench.record import BenchRecord
from qnnrepair.bench.render import plot, render_markdown
from qnnrepair.bench.run import SPLITS, run_bench, run_setting

__all__ = [
    "BASELINE_METHODS", "METHODS", "ON_TOP", "REPAIR_METHODS", "SPLITS", "BenchConfig",
    "BenchMethod", "BenchRecord", "baseline_method", "get_method", "plot", "register_method",
    "render_markdown", "run_bench", "run_setting",
]
