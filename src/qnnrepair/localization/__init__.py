"""Spectrum-based fault localization: which neurons did quantization break?

record_spectrum (hooks, streaming counts) -> SpectrumCounts per layer -> a suspiciousness metric
-> rank_neurons. SpectrumLocalizer does all three in one `fit`.
"""

from qnnrepair.localization.localizer import SpectrumLocalizer
from qnnrepair.localization.metrics import (
    METRICS,
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
    RelativeError,
    RunningMoments,
    StateRule,
    get_state_rule,
    register_state_rule,
)

__all__ = [
    "METRICS",
    "ORACLES",
    "STATE_RULES",
    "ActivationFlip",
    "FlipOrRelativeError",
    "FloatStats",
    "RelativeError",
    "RunningMoments",
    "Spectrum",
    "SpectrumCounts",
    "SpectrumLocalizer",
    "StateRule",
    "compute_scores",
    "get_metric",
    "get_state_rule",
    "metric_parameters",
    "rank_neurons",
    "record_spectrum",
    "register_metric",
    "register_state_rule",
    "safe_divide",
    "score_layers",
]
