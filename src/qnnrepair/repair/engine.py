"""The repair loop: rank the neurons, repair the top N for growing N, keep what validation
accepts (docs/DESIGN.md, sections 1 and 4)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field, replace

import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import BATCH_ELEMENTS, batch_size_for
from qnnrepair.localization import make_localizer
from qnnrepair.neurons import Neuron
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel, batches
from qnnrepair.repair.acceptance import Guard, Score
from qnnrepair.repair.candidate import (
    FitCache,
    NeuronChange,
    Targets,
    build_candidate,
    pass_layers,
)
from qnnrepair.repair.config import RepairConfig
from qnnrepair.repair.layers import layer_names
from qnnrepair.repair.lp import LPBackend, make_backend

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One round of the acceptance loop."""

    neurons: list[Neuron]
    validation_accuracy: float
    accepted: bool
    n_lps: int
    validation_divergence: float = float("nan")
    lp_seconds: list[float] = field(default_factory=list)
    lp_sizes: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"neurons": [str(n) for n in self.neurons],
                "validation_accuracy": self.validation_accuracy,
                "validation_divergence": self.validation_divergence, "accepted": self.accepted,
                "n_lps": self.n_lps, "lp_seconds": self.lp_seconds,
                "lp_sizes": [list(s) for s in self.lp_sizes], "seconds": self.seconds}


class Repairer:
    """Repairs a QuantizedModel on a repair set, guarded by a validation set.

        Repairer(preset("default")).fit(qmodel, repair_x, repair_y, val_x, val_y)

    `fit` ranks the neurons of `config.localization.layers` itself, or takes `ranking` (a list
    of Neuron, most to blame first, or a fitted localizer with `ranking_`). It learns
    `ranking_`, `scores_` ({layer: scores}, None for a given list), `localizer_` (or None),
    `steps_` (each acceptance round), `changes_` (the neuron changes kept), `repaired_` (the
    repaired QuantizedModel; the input one is untouched), `validation_accuracy_` (float,
    quantized, repaired), `validation_divergence_` (quantized, repaired: mean KL from the
    float model's soft predictions) and `timings_`. `backend` solves the LPs (default: the
    one named in `config.execution`).
    """

    def __init__(self, config: RepairConfig | None = None,
                 backend: LPBackend | None = None) -> None:
        self.config = config or RepairConfig()
        self.backend = backend

    def __repr__(self) -> str:
        return f"Repairer({self.config})"

    def fit(self, qmodel: QuantizedModel, repair_images: torch.Tensor,
            repair_labels: torch.Tensor, validation_images: torch.Tensor,
            validation_labels: torch.Tensor, show_progress: bool = False, *,
            ranking=None) -> Repairer:
        cfg, start = self.config, time.perf_counter()
        check_validation_labels(validation_labels)
        self.timings_: dict[str, float] = {}
        work = fast_layout(qmodel)
        rule = cfg.acceptance
        guard = Guard(work.float_model, validation_images, validation_labels, rule.criterion,
                      rule.min_gain, rule.min_z)
        guard.run_like(work.model)  # deployed graphs: in ONNX Runtime, or from their change
        quantized = guard.score(work.model)  # the unchanged model, scored once
        if quantized.accuracy >= guard.float_accuracy and ranking is None:
            # Nothing to repair: V is already at the float model's accuracy. Decided before
            # ranking, which costs more than anything else on a large model.
            self.localizer_ = self.scores_ = None
            self.ranking_ = []
        else:
            self._rank(work, repair_images, repair_labels, ranking, show_progress)
        self.timings_["localize"] = time.perf_counter() - start
        targets = Targets.of(work, repair_images, repair_labels, cfg.localization.oracle)
        with self._backend() as backend:
            self._loop(work, repair_images, targets, guard, quantized, backend, show_progress)
        self.repaired_ = as_given(self.repaired_, qmodel)
        self.timings_["total"] = time.perf_counter() - start
        return self

    def _loop(self, qmodel, repair_images, targets, guard, quantized, backend,
              show_progress) -> None:
        """The acceptance loop: candidates from the top of the ranking, judged on V."""
        cfg = self.config
        rule = cfg.acceptance
        best = quantized
        float_val = guard.float_accuracy
        best_model = qmodel.copy()
        self.steps_: list[Step] = []
        self.changes_: list[NeuronChange] = []
        loop_start = time.perf_counter()
        ranking = self.ranking_[: rule.max_neurons or None]
        cache = FitCache(float_layers=pass_layers(qmodel, ranking, cfg))
        for stop in progress(rule.sizes(len(ranking)), show_progress, desc="repair"):
            if best.accuracy >= float_val:  # V has reached the float model's accuracy
                break
            if self._out_of_time(loop_start):
                break
            step_start = time.perf_counter()
            candidate, changes, solved = build_candidate(qmodel, ranking[:stop],
                                                         repair_images, targets, cfg, backend,
                                                         cache)
            score = guard.score(candidate.model)
            step = _step(ranking[:stop], solved, score, guard.accepts(score, best, bool(changes)))
            step.seconds = time.perf_counter() - step_start
            self.steps_.append(step)
            logger.info("top %d neurons: validation %s (best %s) %s", stop, score, best,
                        "kept" if step.accepted else "rejected")
            if step.accepted:
                best, best_model, self.changes_ = score, candidate, changes
        self.timings_["repair_loop"] = time.perf_counter() - loop_start
        self.repaired_ = best_model
        self.validation_accuracy_ = {"float": float_val, "quantized": quantized.accuracy,
                                     "repaired": best.accuracy}
        self.validation_divergence_ = {"quantized": quantized.divergence,
                                       "repaired": best.divergence}

    def repair_neurons(self, qmodel: QuantizedModel, neurons: Sequence[Neuron],
                       repair_images: torch.Tensor, repair_labels: torch.Tensor
                       ) -> tuple[QuantizedModel, list[NeuronChange], Step]:
        """`qmodel` with exactly `neurons` repaired and no validation: the acceptance loop's
        candidate for them, its changes, and its LP count and solve times. For experiments that
        compare rankings at a fixed number of neurons; every LP is solved afresh."""
        work = fast_layout(qmodel)
        targets = Targets.of(work, repair_images, repair_labels, self.config.localization.oracle)
        with self._backend() as backend:
            candidate, changes, solved = build_candidate(work, list(neurons), repair_images,
                                                         targets, self.config, backend, FitCache())
        return as_given(candidate, qmodel), changes, _step(list(neurons), solved)

    def schedule(self, n_neurons: int) -> list[int]:
        """How many top neurons each candidate repairs (AcceptanceConfig.sizes)."""
        return self.config.acceptance.sizes(n_neurons)

    def repair_layers(self, qmodel: QuantizedModel) -> list[str]:
        return layer_names(qmodel, self.config.localization.layers)

    def _rank(self, qmodel, images, labels, ranking, show_progress) -> None:
        self.localizer_ = self.scores_ = None
        if ranking is None:  # qmodel is the fit's fast_layout copy already
            ranking = _fit_localizer(qmodel, images, labels, self.config, show_progress)
        if hasattr(ranking, "ranking_"):
            self.localizer_, self.scores_ = ranking, ranking.scores_
            ranking = ranking.ranking_
        self.ranking_: list[Neuron] = list(ranking)
        unknown = sorted({n.layer for n in self.ranking_} - set(qmodel.layers))
        if unknown:
            raise QnnRepairError(f"the ranking names layers the model does not have: "
                                 f"{', '.join(unknown)}; rank this model's neurons")

    def _backend(self) -> AbstractContextManager[LPBackend]:
        """The given backend (its owner closes it), or the configured one, closed after use."""
        if self.backend is not None:
            return nullcontext(self.backend)
        execution = self.config.execution
        backend = make_backend(execution.backend, n_workers=execution.n_workers)
        return closing(backend) if hasattr(backend, "close") else nullcontext(backend)

    def _out_of_time(self, loop_start: float) -> bool:
        budget = self.config.acceptance.time_budget_s
        return budget is not None and time.perf_counter() - loop_start > budget


def fit_localizer(qmodel: QuantizedModel, images: torch.Tensor, labels: torch.Tensor,
                  config: RepairConfig, show_progress: bool = False):
    """The localizer of `config.localization`, fitted on the repair set: the one ranking that
    `qnnrepair localize` prints and `qnnrepair repair` repairs."""
    return _fit_localizer(fast_layout(qmodel), images, labels, config, show_progress)


def _fit_localizer(qmodel: QuantizedModel, images: torch.Tensor, labels: torch.Tensor,
                   config: RepairConfig, show_progress: bool = False):
    loc = config.localization
    # Forward and backward through both models keep every activation: half an evaluation
    # batch in float32 (250 CIFAR images; 5 ImageNet images, about 1 GB on MobileNetV2), a
    # quarter for a deployed file's float64 path (2 ImageNet images, about 0.9 GB; 5 took 2 GB)
    size = batch_size_for(images, 250, BATCH_ELEMENTS * 2 // qmodel.gradient_bytes)
    localizer = make_localizer(loc.metric, state_rule=loc.state_rule, oracle=loc.oracle,
                               seed=config.seed)
    return localizer.fit(qmodel.float_model, qmodel.model, layer_names(qmodel, loc.layers),
                         list(zip(batches(images, size), batches(labels, size))),
                         show_progress=show_progress)


def fast_layout(qmodel: QuantizedModel) -> QuantizedModel:
    """A copy of both networks for the passes of a fit, channels-last: CPU convolutions run
    faster there (about a quarter less CPU on ResNet-32), with the same values up to float
    rounding (which can flip a quantized activation's rounding). Works on a QuantizedModel and
    on a deployed file's model alike (both dataclasses)."""
    def moved(module: torch.nn.Module) -> torch.nn.Module:
        return copy.deepcopy(module).to(memory_format=torch.channels_last)

    return replace(qmodel, model=moved(qmodel.model), float_model=moved(qmodel.float_model))


def as_given(model: QuantizedModel, given: QuantizedModel) -> QuantizedModel:
    """A repaired `model` (a fast_layout copy) in the standard layout, beside `given`'s float
    network: what the caller passed in, with other integers."""
    return replace(model, model=model.model.to(memory_format=torch.contiguous_format),
                   float_model=given.float_model)


def _step(neurons: list[Neuron], solved, score: Score | None = None,
          accepted: bool = False) -> Step:
    return Step(neurons, score.accuracy if score else float("nan"), accepted, len(solved),
                validation_divergence=score.divergence if score else float("nan"),
                lp_seconds=[r.solve_seconds for r in solved],
                lp_sizes=[(r.n_rows, r.n_cols) for r in solved])


def check_validation_labels(labels: torch.Tensor) -> None:
    """Validation decides what a repair may keep. With fewer than two classes in it, a model
    that predicts one class for everything would score 100% and be kept: refuse instead."""
    classes = torch.unique(labels).tolist()
    if len(classes) < 2:
        what = "empty" if not classes else f"all of class {classes[0]}"
        raise QnnRepairError(
            f"the validation labels ({len(labels)} images) are {what}: validation could not "
            "tell whether a repair harms the other classes; give data with at least two "
            "classes (check the labels)")
