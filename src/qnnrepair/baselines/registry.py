"""The baselines registry: every post-training method a user could pick instead of a repair.

A baseline is a function

    baseline(qmodel, calibration_images, *, seed=0, show_progress=False, **params) -> QuantizedModel

registered by name with `@register_baseline("name")`. It returns a NEW QuantizedModel
(`qmodel.copy()`) whose integer weights (`weight_int`) and/or int32 biases (`bias_int`) differ;
scales and activation ranges stay as calibrated, and the input model is never changed.
`calibration_images` are normalized float NCHW tensors (data-free methods ignore them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from qnnrepair.registry import Registry

Baseline = Callable[..., Any]

BASELINES = Registry("baseline")


def register_baseline(name: str) -> Callable[[Baseline], Baseline]:
    """Decorator: make `fn` selectable as `get_baseline(name)`."""
    return BASELINES.register(name)


def get_baseline(name: str) -> Baseline:
    return BASELINES.lookup(name)


def baseline_parameters(name: str) -> dict[str, Any]:
    """The method-specific keyword parameters of a baseline, with their defaults."""
    signature = inspect.signature(get_baseline(name))
    return {p.name: p.default for p in signature.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}
