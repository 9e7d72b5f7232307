"""Which neurons did quantization break? Every localizer keeps one contract (base.Localizer).

GradientBlame (the default) and CounterfactualBlame rank by the output divergence a neuron
causes (blame.py). SpectrumLocalizer is the paper's spectrum-based fault localization:
record_spectrum (hooks, streaming counts) -> SpectrumCounts per layer -> a suspiciousness metric
-> rank_neurons. make_localizer builds any of them from one name; layer_costs.layer_costs says
per layer how many points it costs.
"""

from qnnrepair.localization.base import Localizer
from qnnrepair.localization.blame import (
    DIVERGENCES,
    CounterfactualBlame,
    GradientBlame,
    register_divergence,
)
from qnnrepair.localization.factory import (
    BLAME_LOCALIZERS,
    localizer_names,
    make_localizer,
    register_localizer,
)
from qnnrepair.localization.localizer import SpectrumLocalizer
from qnnrepair.localization.metrics import (
    METRICS,
    GradedSpectrumCounts,
    SpectrumCounts,
    compute_scores,
    get_metric,
    metric_parameters,
    rank_neurons,
    register_metric,
    safe_divide,
    score_layers,
)
from qnnrepair.localization.spectrum import ORACLES, Spectrum, record_spectrum
from qnnrepair.localization.states import (
    STATE_RULES,
    ActivationFlip,
    FlipOrRelativeError,
    FloatStats,
    GradedError,
    RelativeError,
    RunningMoments,
    StateRule,
    get_state_rule,
    register_state_rule,
)

__all__ = [
    "BLAME_LOCALIZERS",
    "DIVERGENCES",
    "METRICS",
    "ORACLES",
    "STATE_RULES",
    "ActivationFlip",
    "CounterfactualBlame",
    "FlipOrRelativeError",
    "FloatStats",
    "GradedError",
    "GradedSpectrumCounts",
    "GradientBlame",
    "Localizer",
    "RelativeError",
    "RunningMoments",
    "Spectrum",
    "SpectrumCounts",
    "SpectrumLocalizer",
    "StateRule",
    "compute_scores",
    "get_metric",
    "get_state_rule",
    "localizer_names",
    "register_localizer",
    "make_localizer",
    "metric_parameters",
    "rank_neurons",
    "record_spectrum",
    "register_divergence",
    "register_metric",
    "register_state_rule",
    "safe_divide",
    "score_layers",
]
