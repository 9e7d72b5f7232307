"""Record the spectrum: per neuron, how often it deviates on failing and on passing inputs.

Outcome of each input x with oracle o(x) (the label, or the float model's prediction), decided
by `qnnrepair.outcomes`: passing if Q(x) == o(x); failing if Q(x) != o(x) while F(x) == o(x) (a
failure caused by quantization); skipped otherwise (F is wrong too, so x is not a repair target).

Forward hooks on the named layers of both models capture their outputs (the pre-activations).
Counts are accumulated batch by batch: no more than one batch of activations is ever held.
Hooks are removed and the models' train/eval flags restored on every exit, errors included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization.forward import (
    LayerRecorder,
    check_layer_names,
    device_of,
    eval_mode,
    predictions,
    resolve_layers,
    unpacked,
)
from qnnrepair.localization.metrics import GradedSpectrumCounts, SpectrumCounts
from qnnrepair.localization.states import (
    FloatStats,
    RunningMoments,
    StateRule,
    get_state_rule,
)
from qnnrepair.outcomes import ORACLES, outcomes
from qnnrepair.progress import progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spectrum:
    """Per-layer SpectrumCounts (in the order the layers were given) and the input outcomes.

    n_passed + n_failed + n_skipped is the number of inputs seen; every neuron's counts satisfy
    ef + nf = n_failed and ep + np = n_passed.
    """

    counts: Mapping[str, SpectrumCounts]
    n_passed: int
    n_failed: int
    n_skipped: int
    oracle: str = "label"
    state_rule: StateRule | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.counts)

    @property
    def n_inputs(self) -> int:
        return self.n_passed + self.n_failed + self.n_skipped

    @property
    def n_neurons(self) -> int:
        return sum(c.n_neurons for c in self.counts.values())

    def __repr__(self) -> str:
        return (
            f"Spectrum(layers={len(self.counts)}, n_neurons={self.n_neurons}, "
            f"n_passed={self.n_passed}, n_failed={self.n_failed}, n_skipped={self.n_skipped}, "
            f"oracle={self.oracle!r}, state_rule={self.state_rule!r})"
        )


def record_spectrum(
    float_model: nn.Module,
    quant_model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    oracle: str = "label",
    state_rule: str | StateRule = "relative_error",
    show_progress: bool = False,
) -> Spectrum:
    """Run both models on `batches` of (float NCHW images, int labels) and count, per neuron of
    each layer in `layers`, deviations on failing and passing inputs.

    Rules that need float statistics take a first pass over `batches` (float model only), so
    `batches` must then be re-iterable (a list or a DataLoader, not a generator).
    """
    if oracle not in ORACLES:
        raise QnnRepairError(f"unknown oracle {oracle!r}; use one of {', '.join(ORACLES)}")
    rule = get_state_rule(state_rule)
    layers = check_layer_names(layers)
    float_modules = resolve_layers(float_model, layers, "float model")
    quant_modules = resolve_layers(quant_model, layers, "quantized model")
    if rule.needs_float_stats and iter(batches) is batches:
        raise QnnRepairError(
            f"state rule {rule.name!r} reads the batches twice; pass a list or a DataLoader, "
            "not an iterator or generator"
        )
    device = device_of(float_model)

    with ExitStack() as stack:
        stack.enter_context(eval_mode(float_model))
        stack.enter_context(eval_mode(quant_model))
        float_run = stack.enter_context(LayerRecorder(float_model, float_modules, "float model"))
        quant_run = stack.enter_context(
            LayerRecorder(quant_model, quant_modules, "quantized model")
        )
        stack.enter_context(torch.no_grad())

        stats: dict[str, FloatStats] | None = None
        if rule.needs_float_stats:
            stats = _float_stats(float_run, layers, batches, device, show_progress)

        counter = _SpectrumCounter(layers)
        for images, labels in unpacked(progress(batches, show_progress, desc="spectrum"), device):
            float_logits, float_acts = float_run(images)
            quant_logits, quant_acts = quant_run(images)
            float_pred = predictions(float_logits, len(labels), "float model")
            quant_pred = predictions(quant_logits, len(labels), "quantized model")
            outcome = outcomes(float_pred, quant_pred, labels, oracle)
            passing, failing = outcome.passing, outcome.failing
            counter.add_outcomes(passing, failing)
            for layer in layers:
                a_float, a_quant = float_acts[layer], quant_acts[layer]
                deviating = rule.deviates(a_float, a_quant, None if stats is None else stats[layer])
                if deviating.shape != (len(labels), a_float.shape[1]):
                    raise QnnRepairError(
                        f"state rule {rule.name!r} returned shape {tuple(deviating.shape)} for "
                        f"layer {layer!r}, expected {(len(labels), a_float.shape[1])}"
                    )
                counter.add_layer(layer, _degrees(rule, layer, deviating), passing, failing)

    spectrum = counter.result(oracle, rule)
    logger.debug("recorded %r", spectrum)
    return spectrum


# --- helpers -----------------------------------------------------------------------------------


class _SpectrumCounter:
    """Streaming ef/ep per neuron and passed/failed/skipped per input; nf and np follow."""

    def __init__(self, layers: Sequence[str]) -> None:
        self.failed_deviating: dict[str, torch.Tensor] = {}
        self.passed_deviating: dict[str, torch.Tensor] = {}
        self.layers = list(layers)
        self.n_passed = self.n_failed = self.n_skipped = 0

    def add_outcomes(self, passing: torch.Tensor, failing: torch.Tensor) -> None:
        n_passed, n_failed = int(passing.sum()), int(failing.sum())
        self.n_passed += n_passed
        self.n_failed += n_failed
        self.n_skipped += len(passing) - n_passed - n_failed

    def add_layer(
        self, layer: str, deviating: torch.Tensor, passing: torch.Tensor, failing: torch.Tensor
    ) -> None:
        dtype = torch.float64 if deviating.is_floating_point() else torch.int64
        failed = deviating[failing].sum(0, dtype=dtype).cpu()
        passed = deviating[passing].sum(0, dtype=dtype).cpu()
        if layer not in self.failed_deviating:
            self.failed_deviating[layer], self.passed_deviating[layer] = failed, passed
            return
        if failed.shape != self.failed_deviating[layer].shape:
            raise QnnRepairError(
                f"layer {layer!r} had {failed.shape[0]} channels after "
                f"{self.failed_deviating[layer].shape[0]} before"
            )
        self.failed_deviating[layer] += failed
        self.passed_deviating[layer] += passed

    def result(self, oracle: str, rule: StateRule) -> Spectrum:
        if not self.failed_deviating:
            raise QnnRepairError("no batches were given; pass at least one batch of repair inputs")
        counts = {}
        for layer in self.layers:
            ef = self.failed_deviating[layer].numpy()
            ep = self.passed_deviating[layer].numpy()
            kind = GradedSpectrumCounts if rule.graded else SpectrumCounts
            counts[layer] = kind(
                failed_deviating=ef,
                passed_deviating=ep,
                failed_not_deviating=self.n_failed - ef,
                passed_not_deviating=self.n_passed - ep,
            )
        return Spectrum(counts, self.n_passed, self.n_failed, self.n_skipped, oracle, rule)


def _degrees(rule: StateRule, layer: str, deviating: torch.Tensor) -> torch.Tensor:
    """A binary rule's states as bool; a graded rule's degrees as float64, checked in [0, 1]."""
    if not rule.graded:
        return deviating.bool()
    degrees = deviating.double()
    if not bool(((degrees >= 0) & (degrees <= 1)).all()):
        raise QnnRepairError(
            f"graded state rule {rule.name!r} gave degrees outside [0, 1] for layer {layer!r}"
        )
    return degrees


def _float_stats(
    float_run: LayerRecorder,
    layers: Sequence[str],
    batches: Iterable[Any],
    device: torch.device | None,
    show_progress: bool,
) -> dict[str, FloatStats]:
    moments = {layer: RunningMoments() for layer in layers}
    for images, _ in unpacked(progress(batches, show_progress, desc="float statistics"), device):
        _, activations = float_run(images)
        for layer in layers:
            moments[layer].update(activations[layer])
    return {layer: m.result() for layer, m in moments.items()}
