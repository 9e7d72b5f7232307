"""Repair settings, in four parts, and the named presets.

    RepairConfig(localization=LocalizationConfig(...), lp=LPConfig(...),
                 acceptance=AcceptanceConfig(...), execution=ExecutionConfig(...), seed=0)

Each part is a frozen dataclass validated when built; `RepairConfig.to_dict()` is serialized
into every report (with CONFIG_VERSION) and `RepairConfig.from_dict` reads it back.
`preset(name, **overrides)` takes overrides by field name (`metric="ochiai"`, `n_workers=1`):
every field name is unique across the parts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from qnnrepair.errors import QnnRepairError
from qnnrepair.outcomes import ORACLES
from qnnrepair.repair.layers import LAYER_CHOICES
from qnnrepair.repair.lp import NORMS, formulation_names
from qnnrepair.repair.lp.backend import BACKENDS

# Read back only at this version: 1 was the flat RepairConfig of qnnrepair 0.1 (22 fields), 2
# had no acceptance.min_z, 3 still had the schedule options measured and removed (CHANGELOG.md)
CONFIG_VERSION = 4
WEIGHT_DOMAINS = ("rounding", "grid")
MIN_SUMMARY_IMAGES = 64
SCHEDULES = ("geometric", "linear")
CRITERIA = ("kl", "accuracy")


@dataclass(frozen=True)
class LocalizationConfig:
    """Which neurons to blame: `metric` ranks the neurons of `layers` ("hidden" by default:
    every layer but the output one, whose label-driven margin LP fits the repair set's labels
    rather than the float model). "gradient" (the default) is first-order
    output blame, chosen because it ranks ResNet-20's neurons like the exact counterfactual on
    the repair set (Spearman +0.90, Ochiai +0.26: benchmarks/results/experiments/
    blame_reference.md); SBFL metrics use spectra recorded with `state_rule` and `oracle`
    ("label", or "float": the float model's prediction is the truth)."""

    metric: str = "gradient"
    state_rule: str = "relative_error"
    oracle: str = "label"
    layers: str = "hidden"

    def __post_init__(self) -> None:
        from qnnrepair.localization import localizer_names

        _choice("metric", self.metric, tuple(localizer_names()))
        _choice("layers", self.layers, LAYER_CHOICES)
        _choice("oracle", self.oracle, ORACLES)


@dataclass(frozen=True)
class LPConfig:
    """How each neuron's LP is built and solved.

    Hidden neurons use `hidden_formulation`, the output layer `output_formulation` (registered
    formulations, repair/lp/); `norm` is the penalty on the integer deltas, weighted by `lam`;
    `kappa` is the margin; `integer` solves a MILP with `time_limit` seconds instead of LP
    relaxation + rounding; `max_rows` caps the output-layer LP, `hidden_rows` each hidden-neuron
    LP; "match" summarizes `summary_samples` sampled positions into those rows (64 by default:
    over ResNet-20 W3A8 / W4A8 / W4A4 and three seeds, 64 rows gave the same validation accuracy
    as 256 with a lower KL, at a quarter of the CPU seconds, benchmarks/results/
    defaults-cost.md). `weight_domain`
    "rounding" lets a hidden weight move only between the floor and the ceiling of its float
    value (the LP chooses rounding directions, as AdaRound does; such LPs solved about 4x
    faster at 576 weights x 256 rows), "grid" anywhere on the integer grid. `failing_only`
    builds raw-row LPs on failing repair images only (the paper's choice). A "match" LP of a
    neuron with more than `max_columns` inputs moves only the `max_columns` weights that best
    explain the mismatch (Conv3's 12,544-input dense layer; None: every weight). "match" rows
    come from at most as many repair images as hold `summary_pixels` input pixels, and at
    least MIN_SUMMARY_IMAGES (None: every image): a candidate records them in one forward pass
    over those images as a single batch, whose activations they bound, and large images give
    many positions each (2^20: all of 1,000 CIFAR images, 64 of ImageNet's, about 1.5 GiB of
    MobileNetV2 activations).
    """

    hidden_formulation: str = "match"
    output_formulation: str = "margin"
    norm: str = "l1"
    lam: float | None = None
    kappa: float | None = None
    integer: bool = False
    time_limit: float | None = 10.0
    max_rows: int = 1000
    hidden_rows: int = 64
    summary_samples: int = 8192
    weight_domain: str = "rounding"
    failing_only: bool = False
    max_columns: int | None = 4096
    summary_pixels: int | None = 2**20

    def __post_init__(self) -> None:
        _choice("hidden_formulation", self.hidden_formulation, formulation_names(output=False))
        _choice("output_formulation", self.output_formulation, formulation_names(output=True))
        _choice("norm", self.norm, NORMS)
        _choice("weight_domain", self.weight_domain, WEIGHT_DOMAINS)
        if self.max_columns is not None and self.max_columns < 1:
            raise QnnRepairError(f"max_columns must be at least 1 or None, got "
                                 f"{self.max_columns}")
        if self.max_rows < 1 or self.hidden_rows < 1:
            raise QnnRepairError(f"max_rows and hidden_rows must be at least 1, got "
                                 f"{self.max_rows} and {self.hidden_rows}")

    def summary_images(self, n_images: int, pixels_per_image: int) -> int:
        """How many of `n_images` repair images a "match" layer records (summary_pixels)."""
        if self.summary_pixels is None:
            return n_images
        budget = max(MIN_SUMMARY_IMAGES, self.summary_pixels // max(pixels_per_image, 1))
        return min(n_images, budget)

    def options(self, qmax: int, qmin: int | None = None) -> dict[str, Any]:
        """The settings every LP problem of a layer with grid [qmin, qmax] takes (qmin
        -qmax unless given: a deployed file's grid need not be symmetric)."""
        # A wall-clock limit makes an LP's answer depend on the machine's load (seen: a W4A4
        # repair run under a load of about 6 gave other integers than the same code without
        # the limit), so LP relaxations run to the end; only MILPs, which can run for hours,
        # are cut.
        options = {"qmin": -qmax if qmin is None else qmin, "qmax": qmax, "norm": self.norm,
                   "integer": self.integer,
                   "time_limit": self.time_limit if self.integer else None}
        if self.lam is not None:
            options["lam"] = self.lam
        if self.kappa is not None:
            options["kappa"] = self.kappa
        return options


@dataclass(frozen=True)
class AcceptanceConfig:
    """Which candidates are tried and kept. With `schedule` "geometric" or "linear",
    candidate N repairs the top-N neurons of the ranking on the quantized model, for N growing
    as 1, g, g^2, ... (up to half of all), all (g = `growth`) or 1, 2, 3, .... The default
    `growth` 8 (1, 8, 64, ..., all) gave the same model as 4 in 6 of 9 validation runs with two
    candidates fewer, each a forward pass over R and one over V
    (benchmarks/results/defaults-cost.md). Up to `max_neurons`, within
    `time_budget_s` (off by default: a wall-clock budget makes the result depend on the
    machine's load, and the same inputs and seed must give the same model).

    `criterion` judges a candidate on V (repair/acceptance.py): "kl" keeps it when the mean
    KL divergence to the float model's soft predictions drops by at least `min_gain`
    (relative), by at least `min_z` standard errors of the mean per-image drop (a paired test;
    0 turns it off; 1 was chosen on validation, benchmarks/results/experiments/guard_rules.md:
    on top of AdaRound it kept fewer changes that did not carry to the rest of V), and
    accuracy does not drop; "accuracy" keeps it when accuracy does not drop (the paper
    preset). Every candidate is tried.
    Either way the loop stops once validation accuracy reaches the float model's."""

    schedule: str = "geometric"
    growth: int = 8
    max_neurons: int | None = None
    time_budget_s: float | None = None
    criterion: str = "kl"
    min_gain: float = 0.01
    min_z: float = 1.0

    def __post_init__(self) -> None:
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("criterion", self.criterion, CRITERIA)
        if not 0.0 <= self.min_gain < 1.0:
            raise QnnRepairError(f"min_gain must be in [0, 1), got {self.min_gain}")
        if not 0.0 <= self.min_z < math.inf:
            raise QnnRepairError(f"min_z must be 0 or more, got {self.min_z}")
        if self.max_neurons is not None and self.max_neurons < 1:
            raise QnnRepairError(f"max_neurons must be at least 1, got {self.max_neurons}")
        if self.growth < 2:
            raise QnnRepairError(f"growth must be at least 2, got {self.growth}")

    def sizes(self, n_neurons: int) -> list[int]:
        """How many top neurons each candidate repairs (ranking[:n], on the quantized model)."""
        if self.schedule == "linear":
            return list(range(1, n_neurons + 1))
        # A candidate of more than half of all the neurons costs nearly as much as all of them
        # (17,000 on MobileNetV2: 16,384 and then all), so the last step is at least 2x.
        sizes, n = [], 1
        while 2 * n <= n_neurons:
            sizes.append(n)
            n *= self.growth
        return sizes + [n_neurons] if n_neurons else []


@dataclass(frozen=True)
class ExecutionConfig:
    """Where the LPs are solved: a registered backend ("local": a process pool of
    `n_workers`). Changes timings only, never results."""

    backend: str = "local"
    n_workers: int = 2

    def __post_init__(self) -> None:
        _choice("backend", self.backend, tuple(BACKENDS))
        if self.n_workers < 1:
            raise QnnRepairError(f"n_workers must be at least 1, got {self.n_workers}")


_PARTS = {"localization": LocalizationConfig, "lp": LPConfig, "acceptance": AcceptanceConfig,
          "execution": ExecutionConfig}


@dataclass(frozen=True)
class RepairConfig:
    """Everything that decides what a repair does; serialized into every report."""

    localization: LocalizationConfig = field(default_factory=LocalizationConfig)
    lp: LPConfig = field(default_factory=LPConfig)
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> RepairConfig:
        data = dict(data)
        version = data.pop("version", None)
        if version != CONFIG_VERSION:
            raise QnnRepairError(f"repair config version {version} is not {CONFIG_VERSION}: "
                                 "write it again with this version of qnnrepair")
        try:
            parts = {name: part(**data.pop(name, {})) for name, part in _PARTS.items()}
            return cls(**parts, **data)
        except TypeError as err:
            raise QnnRepairError(f"repair config: {err}") from None

    def replace(self, **overrides) -> RepairConfig:
        """A copy with fields changed by name, whatever part they are in."""
        changes: dict[str, dict] = {}
        for name, value in overrides.items():
            if name == "seed":
                continue
            part = _PART_OF.get(name)
            if part is None:
                raise QnnRepairError(f"unknown repair setting {name!r}: use one of "
                                     f"{', '.join(sorted(_PART_OF))}, seed")
            changes.setdefault(part, {})[name] = value
        new = {part: replace(getattr(self, part), **values) for part, values in changes.items()}
        return replace(self, **new, seed=overrides.get("seed", self.seed))


_PART_OF = {f.name: part for part, cls in _PARTS.items() for f in fields(cls)}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise QnnRepairError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")


# The seed method as published: one dense layer (the output layer here), per-neuron L-infinity
# MILP with sign constraints on failing inputs, top-N neurons applied one more at a time, N up
# to 10. Kept: clamping to the grid, zero points, rounding, held-out validation.
PRESETS: dict[str, RepairConfig] = {
    "default": RepairConfig(),
    "paper": RepairConfig().replace(metric="tarantula", layers="last", output_formulation="sign",
                                    norm="linf", integer=True, failing_only=True,
                                    schedule="linear", weight_domain="grid", max_neurons=10,
                                    criterion="accuracy"),
}


def preset(name: str, **overrides) -> RepairConfig:
    if name not in PRESETS:
        raise QnnRepairError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
