"""make_localizer: one name -> a fitted-to-be localizer, SBFL metric or output blame.

The repair engine and the CLI know a localizer by one string (RepairConfig.metric, --metric);
this is the single place that string becomes an object, so a new localizer is registered here
and nowhere else.
"""

from __future__ import annotations

from typing import Any

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization.base import Localizer
from qnnrepair.localization.blame import CounterfactualBlame, GradientBlame
from qnnrepair.localization.localizer import SpectrumLocalizer
from qnnrepair.localization.metrics import METRICS
from qnnrepair.localization.states import StateRule
from qnnrepair.registry import Registry

# Blame localizers by name; their parameters are the class's constructor arguments.
BLAME_LOCALIZERS = Registry("localizer")
BLAME_LOCALIZERS.register("gradient")(GradientBlame)
BLAME_LOCALIZERS.register("counterfactual")(CounterfactualBlame)


def register_localizer(name: str):
    """Decorator: make a localizer class selectable by `name` (RepairConfig metric, --metric).
    The class takes its parameters as keyword arguments and has `fit(float_model,
    quant_model, layers, batches, show_progress=False)` learning `scores_` and `ranking_`."""
    def decorator(cls: type) -> type:
        if name in METRICS:
            raise QnnRepairError(f"a metric named {name!r} is already registered")
        return BLAME_LOCALIZERS.register(name)(cls)
    return decorator


def localizer_names() -> list[str]:
    """Every name make_localizer accepts: the SBFL metrics, then the blame localizers."""
    return sorted(METRICS) + sorted(BLAME_LOCALIZERS)


def make_localizer(
    metric: str,
    *,
    state_rule: str | StateRule = "relative_error",
    oracle: str = "label",
    seed: int = 0,
    **params: Any,
) -> Localizer:
    """The localizer called `metric`, not yet fitted (the Localizer contract of
    localization.base).

    SBFL metric names (METRICS) give a SpectrumLocalizer with `state_rule`, `oracle`, `seed` and
    `params` as its metric parameters (e.g. star=3 for dstar). "gradient" and "counterfactual"
    give GradientBlame / CounterfactualBlame with `params` as their arguments (divergence=...,
    absolute=...); they ignore `state_rule`, `oracle` and `seed`: their reference is the float
    model's output on every input, not a label and not a binary state.
    """
    if metric in BLAME_LOCALIZERS:
        cls = BLAME_LOCALIZERS[metric]
        try:
            return cls(**params)
        except TypeError as error:
            raise QnnRepairError(f"localizer {metric!r}: {error}") from None
    if metric not in METRICS:
        raise QnnRepairError(
            f"unknown metric {metric!r}; known: {', '.join(localizer_names())}"
        )
    return SpectrumLocalizer(
        metric=metric, state_rule=state_rule, oracle=oracle, metric_params=params or None,
        seed=seed,
    )
