"""SpectrumLocalizer: record the spectrum, score every neuron with a metric, rank them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization.metrics import (
    SpectrumCounts,
    compute_scores,
    metric_parameters,
    rank_neurons,
    score_layers,
)
from qnnrepair.localization.spectrum import Spectrum, record_spectrum
from qnnrepair.localization.states import StateRule, get_state_rule
from qnnrepair.neurons import Neuron
from qnnrepair.outcomes import ORACLES


class SpectrumLocalizer:
    """Spectrum-based fault localization of the neurons a quantization broke.

        localizer = SpectrumLocalizer(metric="ochiai").fit(float_model, model, layers, batches)
        localizer.ranking_[:10]      # the ten most suspicious Neuron(layer, index)

    metric: a name in METRICS; metric_params: its parameters (e.g. {"star": 3} for dstar);
    state_rule: a name in STATE_RULES or a StateRule instance (e.g. RelativeError(tau=0.2));
    oracle: "label" or "float" (the float model's prediction replaces the label);
    seed: for seeded metrics (random).

    Learned by fit: spectrum_ (Spectrum), scores_ ({layer: float64 array}), ranking_
    (list[Neuron], most suspicious first, ties by layer order then index).
    """

    def __init__(
        self,
        metric: str = "tarantula",
        state_rule: str | StateRule = "relative_error",
        oracle: str = "label",
        metric_params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.metric = metric
        self.state_rule = state_rule
        self.oracle = oracle
        self.metric_params = metric_params
        self.seed = seed
        self._check_params()  # fail at construction, before minutes of recording

    def _check_params(self) -> dict[str, Any]:
        params = dict(self.metric_params or {})
        if "seed" in params:
            raise QnnRepairError(
                "give the seed as SpectrumLocalizer(seed=...), not in metric_params"
            )
        if "seed" in metric_parameters(self.metric):
            params["seed"] = self.seed
        compute_scores(self.metric, SpectrumCounts.zeros(0), **params)  # checks names and values
        get_state_rule(self.state_rule)
        if self.oracle not in ORACLES:
            raise QnnRepairError(f"unknown oracle {self.oracle!r}; use one of {', '.join(ORACLES)}")
        return dict(self.metric_params or {})

    def fit(
        self,
        float_model: nn.Module,
        quant_model: nn.Module,
        layers: Sequence[str],
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        show_progress: bool = False,
    ) -> SpectrumLocalizer:
        params = self._check_params()
        spectrum = record_spectrum(
            float_model,
            quant_model,
            layers,
            batches,
            oracle=self.oracle,
            state_rule=self.state_rule,
            show_progress=show_progress,
        )
        self.spectrum_: Spectrum = spectrum
        self.scores_: dict[str, np.ndarray] = score_layers(
            spectrum.counts, self.metric, seed=self.seed, **params
        )
        self.ranking_: list[Neuron] = rank_neurons(self.scores_, spectrum.layers)
        return self

    def __repr__(self) -> str:
        return (
            f"SpectrumLocalizer(metric={self.metric!r}, state_rule={self.state_rule!r}, "
            f"oracle={self.oracle!r}, metric_params={self.metric_params!r}, seed={self.seed!r})"
        )
