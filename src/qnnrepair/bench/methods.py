"""The bench methods registry: every column of the side-by-side table, baselines and repairs alike.

A bench method is a function

    run(start, work, setting, config) -> QuantizedModel

registered by name with `@register_method("name", "label", stackable=...)`. `start` is the RTN
model of `setting` (when a stackable method's result is repaired, `on_top`, it is that result);
`work` gives the float model and the repair and validation images, never the test set's for a
decision; `config` is the BenchConfig. It returns a NEW QuantizedModel and leaves `start` as it
is. `stackable` says whether "<name>+qnnrepair" is a row the bench can add (BenchConfig.on_top).
Every registered baseline (`register_baseline`) is a bench method without more ado; registering
it here too gives it a label and parameters drawn from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qnnrepair.baselines import BASELINES, get_baseline
from qnnrepair.errors import QnnRepairError
from qnnrepair.pipeline import Workload
from qnnrepair.quantization import QuantConfig, QuantizedModel, quantize
from qnnrepair.registry import Registry
from qnnrepair.repair import Repairer, preset

# (start, work, setting, config: bench.config.BenchConfig) -> a new QuantizedModel
MethodRun = Callable[[QuantizedModel, Workload, str, Any], QuantizedModel]

ON_TOP = "qnnrepair"  # the method that BenchConfig.on_top runs after a stackable one


@dataclass(frozen=True)
class BenchMethod:
    """One registered method: `name` is its key in BenchConfig.methods and in the rows, `label`
    says in words what it is."""

    name: str
    label: str
    run: MethodRun = field(repr=False)
    stackable: bool = False


METHODS = Registry("bench method", "methods")


def register_method(name: str, label: str, *,
                    stackable: bool = False) -> Callable[[MethodRun], MethodRun]:
    """Decorator: make `run` selectable as a bench method called `name`."""

    def decorator(run: MethodRun) -> MethodRun:
        METHODS.register(name, BenchMethod(name, label, run, stackable))(run)
        return run

    return decorator


def get_method(name: str) -> BenchMethod:
    """The method registered as `name`; any other registered baseline is one too, run with
    its default parameters (and config.baseline_params) and stackable."""
    if isinstance(name, str) and name not in METHODS and name in BASELINES:
        return BenchMethod(name, f"baseline {name}", baseline_method(name), stackable=True)
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        known = sorted(METHODS.keys() | BASELINES.keys())
        raise QnnRepairError(
            f"unknown bench method {name!r}; known methods: {', '.join(known)}"
        ) from None


def baseline_method(name: str, **from_config: str) -> MethodRun:
    """The registered baseline `name` as a bench method, calibrated on the repair images.
    `from_config` maps a keyword of the baseline to the BenchConfig field that gives its value
    (adaround's `iters` from `adaround_iters`); `config.baseline_params[name]` overrides both."""

    def run(start: QuantizedModel, work: Workload, setting: str,
            config) -> QuantizedModel:
        params = {key: getattr(config, attr) for key, attr in from_config.items()}
        params.update(config.baseline_params.get(name, {}))
        return get_baseline(name)(start, work.images("repair"), seed=config.seed, **params)

    return run


def repair(start: QuantizedModel, work: Workload, preset_name: str,
           config) -> QuantizedModel:
    """The repair of `start` with the preset `preset_name`, through the public Repairer."""
    repairer = Repairer(preset(preset_name, seed=config.seed)).fit(
        start, work.images("repair"), work.labels("repair"), work.images("validation"),
        work.labels("validation"))
    return repairer.repaired_


for _name, _label, _from_config in (
        ("rtn", "round to nearest, as quantized", {}),
        ("bias_correction", "empirical bias correction (Nagel et al. 2019)", {}),
        ("squant", "SQuant data-free rounding (Guo et al. 2022)", {}),
        ("gptq", "GPTQ second-order rounding (Frantar et al. 2023)", {}),
        ("dfq", "DFQ cross-layer equalization + bias correction (Nagel et al. 2019)", {}),
        ("adaround", "AdaRound learned rounding (Nagel et al. 2020)",
         {"iters": "adaround_iters"}),
        ("qdrop", "QDrop block reconstruction with dropped activation quantization "
         "(Wei et al. 2022)", {"iters": "adaround_iters"}),
        ("least_squares_last_layer", "least-squares refit of the last layer", {})):
    register_method(_name, _label, stackable=True)(baseline_method(_name, **_from_config))
del _name, _label, _from_config


@register_method("rtn_mse", "round to nearest, quantized anew with MSE weight clipping",
                 stackable=True)
def run_rtn_mse(start: QuantizedModel, work: Workload, setting: str,
                config) -> QuantizedModel:
    return quantize(work.model, QuantConfig.from_setting(setting, weight_clipping="mse"),
                    work.images("repair"), model_spec=work.model_spec, seed=config.seed)


@register_method("qnnrepair", "qnnrepair with BenchConfig.repair_preset")
def run_qnnrepair(start: QuantizedModel, work: Workload, setting: str,
                  config) -> QuantizedModel:
    return repair(start, work, config.repair_preset, config)


@register_method("paper", "qnnrepair with the paper preset")
def run_paper(start: QuantizedModel, work: Workload, setting: str,
              config) -> QuantizedModel:
    return repair(start, work, "paper", config)
