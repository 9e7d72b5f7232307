"""RepairReport: what was repaired, how, and how accuracy moved on every split."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from qnnrepair.data.splits import SPLIT_NAMES

SPLITS = SPLIT_NAMES  # the name html_report and older code import
MODELS = ("float", "quantized", "repaired")
# 2: repair_config nested (localization, lp, acceptance, execution); 1: flat, no format_version
REPORT_VERSION = 2


def versions() -> dict[str, str]:
    import highspy  # noqa: F401  (imported for its version)
    import numpy
    import torch

    from qnnrepair import __version__

    try:
        from importlib.metadata import version
        highs = version("highspy")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        highs = "unknown"
    return {"qnnrepair": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "highspy": highs, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.system()}"}


def machine() -> str:
    """CPU model and vector extensions, torch threads and library versions: what a timing (and
    an integer kernel's rounding, which differs between AVX2 and AVX-512 VNNI) needs beside it."""
    import torch

    v = versions()
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        info = {}
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        cpu, flags = info.get("model name", cpu), info.get("flags", "")
    except OSError:
        pass
    isa = vector_extensions(flags.split())
    return (f"{cpu} ({os.cpu_count()} cores{', ' + isa if isa else ''}), "
            f"{torch.get_num_threads()} torch threads; python {v['python']}, torch "
            f"{v['torch']}, highspy {v['highspy']}, numpy {v['numpy']}, qnnrepair "
            f"{v['qnnrepair']}")


def vector_extensions(flags: list[str]) -> str:
    """The widest x86 vector extensions among /proc/cpuinfo's flags, as people name them."""
    if "avx512f" in flags:
        return "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else ""


@dataclass
class RepairReport:
    """Accuracies are percentages keyed [split][model]; `changes` one dict per changed neuron."""

    model: str
    quant_config: dict
    repair_config: dict
    seed: int
    sizes: dict[str, int]
    accuracy: dict[str, dict[str, float]]
    top_neurons: list[tuple[str, float]]
    changes: list[dict]
    steps: list[dict]
    timings: dict[str, float]
    versions: dict[str, str] = field(default_factory=versions)
    per_class: dict[str, list[float]] = field(default_factory=dict)
    splits: str = ""
    blame: dict[str, list[float]] = field(default_factory=dict)  # every ranked neuron's score
    validation_divergence: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)  # index = label; empty: unnamed data
    layer_costs: dict | None = None  # localization.layer_costs.LayerCosts.to_dict(), if asked

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": REPORT_VERSION,
                **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    @property
    def n_lps(self) -> int:
        return sum(s["n_lps"] for s in self.steps)

    def lp_seconds(self) -> list[float]:
        return [t for s in self.steps for t in s["lp_seconds"]]

    def nothing_to_repair(self) -> str | None:
        """Why no repair step ran, or None when some did."""
        if self.steps:
            return None
        val = self.accuracy.get("validation", {})
        quant, float_ = val.get("quantized", float("nan")), val.get("float", float("nan"))
        if quant >= float_:
            return ("the quantized model is already as accurate as the float model on the "
                    f"validation set ({quant:.2f}% vs {float_:.2f}%)")
        return "no repair step ran (time budget spent or no neuron to repair)"

    @property
    def setting(self) -> str:
        """w4a8 and the like for a model qnnrepair quantized; the format for a deployed file."""
        q = self.quant_config
        if "format" in q:
            return f"{q['format']} file"
        return f"w{q.get('weight_bits', '?')}a{q.get('act_bits', '?')}"

    def to_text(self) -> str:
        lines = [f"qnnrepair report: {self.model}, {self.setting}, seed {self.seed}", ""]
        lines.append(f"{'accuracy %':<20}" + "".join(f"{m:>11}" for m in MODELS))
        for split in SPLITS:
            if split in self.accuracy:
                row = self.accuracy[split]
                name = f"{split} ({self.sizes.get(split, '?')})"
                lines.append(f"{name:<20}" + "".join(
                    f"{row.get(m, float('nan')):>11.2f}" for m in MODELS))
        if self.splits:
            lines.append(f"splits: {self.splits}")
        kl = self.validation_divergence
        if kl:
            lines.append(f"validation KL from float: quantized {kl['quantized']:.4f}, "
                         f"repaired {kl['repaired']:.4f}")
        lines += ["", "most suspicious neurons: " + ", ".join(
            f"{n} ({s:.3f})" for n, s in self.top_neurons[:8])]
        if not self.steps:
            lines.append(f"nothing to repair: {self.nothing_to_repair()}; the repaired model "
                         "is the quantized model, unchanged")
        kept = [s for s in self.steps if s["accepted"]]
        lines.append(f"neurons changed: {len(self.changes)} "
                     f"({sum(c['weights_changed'] for c in self.changes)} weights, "
                     f"{len(kept)}/{len(self.steps)} steps kept by validation)")
        times = sorted(self.lp_seconds())
        if times:
            lines.append(f"LPs solved: {self.n_lps}, solve time median "
                         f"{times[len(times) // 2] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.layer_costs:
            from qnnrepair.localization.layer_costs import LayerCosts

            lines += ["", LayerCosts.from_dict(self.layer_costs).to_text(top=15)]
        return "\n".join(lines)
