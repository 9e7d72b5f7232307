"""What a bench run runs: the methods, the stacked rows and their settings, checked when built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from qnnrepair.bench.methods import get_method
from qnnrepair.errors import QnnRepairError

BASELINE_METHODS = ("rtn", "rtn_mse", "bias_correction", "dfq", "gptq", "squant", "adaround",
                    "qdrop", "least_squares_last_layer")
REPAIR_METHODS = ("paper", "qnnrepair")


@dataclass(frozen=True)
class BenchConfig:
    """What to run for each (model, setting): `methods` (registered bench methods, in table
    order) and `on_top`, the stackable methods that qnnrepair is also applied after. Its dict is
    part of a results file's key, so a run resumes only with the same config."""

    methods: tuple[str, ...] = BASELINE_METHODS + REPAIR_METHODS
    on_top: tuple[str, ...] = ("bias_correction", "squant", "adaround", "qdrop")
    adaround_iters: int = 1000
    repair_preset: str = "default"
    seed: int = 0
    baseline_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.methods:
            get_method(name)
        for name in self.on_top:
            if not get_method(name).stackable:
                raise QnnRepairError(f"on_top lists {name!r}, which qnnrepair cannot be "
                                     "stacked on; list baselines there, not repairs")
            if name not in self.methods:
                raise QnnRepairError(f"on_top lists {name!r}, which is not among the methods "
                                     "run; add it to the methods or leave it out of on_top")

    def to_dict(self) -> dict:
        return asdict(self)
