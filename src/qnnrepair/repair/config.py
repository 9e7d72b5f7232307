"""Repair settings and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from qnnrepair.errors import QnnRepairError

LAYER_CHOICES = ("all", "last", "hidden")
HIDDEN_FORMULATIONS = ("match", "sign")
OUTPUT_FORMULATIONS = ("margin", "match", "sign")
NORMS = ("l1", "linf")
WEIGHT_DOMAINS = ("rounding", "grid")
SCHEDULES = ("geometric", "linear")


@dataclass(frozen=True)
class RepairConfig:
    """Everything that decides what a repair does; serialized into every report.

    Localization: `metric`, `state_rule`, `oracle` rank the neurons of `layers` ("hidden" by
    default: every layer but the output one; "all" adds the output layer, whose label-driven
    margin LP over-fitted the repair set at W4A4 on ResNet-20, see benchmarks/README.md).
    LP: hidden neurons use `hidden_formulation` (match the float pre-activation, or the paper's
    sign constraints), the output layer `output_formulation`; `norm` is the penalty on the
    integer deltas, weighted by `lam`; `kappa` is the margin; `integer` solves a MILP with
    `time_limit` seconds instead of LP relaxation + rounding; `max_rows` caps the output-layer
    LP, `hidden_rows` each hidden-neuron LP; the "match" LP summarizes `summary_samples`
    sampled positions into those rows (repair/summary.py), the "sign" LP uses raw rows.
    `weight_domain` "rounding" lets a hidden weight move only between the floor and the
    ceiling of its float value (the LP chooses rounding directions, as AdaRound does; such LPs
    solved about 4x faster at 576 weights x 256 rows), "grid" anywhere on the integer grid.
    Acceptance: candidate N repairs the top-N neurons of the ranking (from the quantized model,
    layer by layer), for N growing by `schedule` (geometric: 1, g, g^2, ..., all with
    g = `growth`; linear: 1, 2, 3, ...) up to `max_neurons`, within `time_budget_s`; a candidate
    replaces the best one only if its validation accuracy is not lower. `time_budget_s` is off
    by default: a wall-clock budget makes the result depend on the machine's load (a run cut
    short stops at a smaller N), and the same inputs and seed must give the same model.
    """

    metric: str = "ochiai"
    state_rule: str = "relative_error"
    oracle: str = "label"
    layers: str = "hidden"
    hidden_formulation: str = "match"
    output_formulation: str = "margin"
    norm: str = "l1"
    lam: float | None = None
    kappa: float | None = None
    integer: bool = False
    time_limit: float | None = 10.0
    max_rows: int = 1000
    hidden_rows: int = 256
    summary_samples: int = 8192
    weight_domain: str = "rounding"
    failing_only: bool = False
    schedule: str = "geometric"
    growth: int = 4
    max_neurons: int | None = None
    time_budget_s: float | None = None
    n_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("layers", self.layers, LAYER_CHOICES)
        _choice("hidden_formulation", self.hidden_formulation, HIDDEN_FORMULATIONS)
        _choice("output_formulation", self.output_formulation, OUTPUT_FORMULATIONS)
        _choice("norm", self.norm, NORMS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("weight_domain", self.weight_domain, WEIGHT_DOMAINS)
        _choice("oracle", self.oracle, ("label", "float"))
        if self.max_rows < 1 or self.hidden_rows < 1:
            raise QnnRepairError(f"max_rows and hidden_rows must be at least 1, got "
                                 f"{self.max_rows} and {self.hidden_rows}")
        if self.max_neurons is not None and self.max_neurons < 1:
            raise QnnRepairError(f"max_neurons must be at least 1, got {self.max_neurons}")
        if self.growth < 2:
            raise QnnRepairError(f"growth must be at least 2, got {self.growth}")
        if self.n_workers < 1:
            raise QnnRepairError(f"n_workers must be at least 1, got {self.n_workers}")

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QnnRepairError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")


# The seed method as published: one dense layer (the output layer here), per-neuron L-infinity
# MILP with sign constraints on failing inputs, top-N neurons applied one more at a time, N up
# to 10. Kept: clamping to the grid, zero points, rounding, held-out validation.
PRESETS: dict[str, RepairConfig] = {
    "default": RepairConfig(),
    "paper": RepairConfig(metric="tarantula", layers="last", output_formulation="sign",
                          norm="linf", integer=True, failing_only=True, schedule="linear",
                          weight_domain="grid",
                          max_neurons=10),
}


def preset(name: str, **overrides) -> RepairConfig:
    if name not in PRESETS:
        raise QnnRepairError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
