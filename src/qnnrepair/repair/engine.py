"""The repair loop: localize, solve LPs for the most suspicious neurons, keep what validation
accepts (DESIGN sections 1 and 4)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qnnrepair.evaluation import accuracy, predict
from qnnrepair.localization import SpectrumLocalizer
from qnnrepair.neurons import Neuron
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel, batches
from qnnrepair.repair import lp
from qnnrepair.repair.activations import LayerRecord, record_layers
from qnnrepair.repair.config import RepairConfig

logger = logging.getLogger(__name__)


@dataclass
class NeuronChange:
    """How one neuron's integers changed."""

    neuron: Neuron
    weights_changed: int
    delta_l1: int
    delta_max: int
    bias_delta: int
    status: str
    solve_seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["neuron"] = str(self.neuron)
        return d


@dataclass
class Step:
    """One round of the acceptance loop."""

    neurons: list[Neuron]
    validation_accuracy: float
    accepted: bool
    n_lps: int
    lp_seconds: list[float] = field(default_factory=list)
    lp_sizes: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"neurons": [str(n) for n in self.neurons],
                "validation_accuracy": self.validation_accuracy, "accepted": self.accepted,
                "n_lps": self.n_lps, "lp_seconds": self.lp_seconds,
                "lp_sizes": [list(s) for s in self.lp_sizes], "seconds": self.seconds}


class Repairer:
    """Repairs a QuantizedModel on a repair set, guarded by a validation set.

    `fit` learns `localizer_` (the ranking), `steps_` (each acceptance round), `changes_` (the
    neuron changes kept), `repaired_` (the repaired QuantizedModel; the input one is untouched),
    `validation_accuracy_` (quantized, repaired, float) and `timings_`.
    """

    def __init__(self, config: RepairConfig | None = None) -> None:
        self.config = config or RepairConfig()

    def __repr__(self) -> str:
        return f"Repairer({self.config})"

    def fit(self, qmodel: QuantizedModel, repair_images: torch.Tensor,
            repair_labels: torch.Tensor, validation_images: torch.Tensor,
            validation_labels: torch.Tensor, show_progress: bool = False) -> Repairer:
        cfg, start = self.config, time.perf_counter()
        self.timings_: dict[str, float] = {}
        layers = self.repair_layers(qmodel)
        self.localizer_ = SpectrumLocalizer(metric=cfg.metric, state_rule=cfg.state_rule,
                                            oracle=cfg.oracle, seed=cfg.seed)
        self.localizer_.fit(qmodel.float_model, qmodel.model, layers,
                            list(zip(batches(repair_images, 250), batches(repair_labels, 250))),
                            show_progress=show_progress)
        self.timings_["localize"] = time.perf_counter() - start
        targets = self._targets(qmodel, repair_images, repair_labels)

        current = qmodel.copy()
        quant_val = accuracy(current.model, validation_images, validation_labels)
        float_val = accuracy(qmodel.float_model, validation_images, validation_labels)
        best = quant_val
        self.steps_: list[Step] = []
        self.changes_: list[NeuronChange] = []
        loop_start = time.perf_counter()
        chunks = list(self._chunks(self.localizer_.ranking_))
        bar = progress(chunks, show_progress, desc="repair")
        for chunk in bar:
            if best >= float_val or self._out_of_time(loop_start):
                break
            step_start = time.perf_counter()
            candidate = current.copy()
            changes, step = self._repair_chunk(candidate, chunk, repair_images, targets)
            step.validation_accuracy = accuracy(candidate.model, validation_images,
                                                validation_labels)
            step.accepted = bool(changes) and step.validation_accuracy >= best
            step.seconds = time.perf_counter() - step_start
            self.steps_.append(step)
            logger.info("neurons %s: validation %.2f%% (best %.2f%%) %s", chunk[0],
                        step.validation_accuracy, best, "kept" if step.accepted else "rejected")
            if step.accepted:
                current, best = candidate, step.validation_accuracy
                self.changes_.extend(changes)
        self.timings_["repair_loop"] = time.perf_counter() - loop_start
        self.timings_["total"] = time.perf_counter() - start
        self.repaired_ = current
        self.validation_accuracy_ = {"float": float_val, "quantized": quant_val, "repaired": best}
        return self

    def repair_layers(self, qmodel: QuantizedModel) -> list[str]:
        if self.config.layers == "last":
            return qmodel.layers[-1:]
        if self.config.layers == "hidden":
            return qmodel.layers[:-1]
        return list(qmodel.layers)

    def _targets(self, qmodel, images, labels) -> dict[str, np.ndarray]:
        """Per repair image: the class to aim for, whether F gets it, whether Q gets it."""
        float_pred = predict(qmodel.float_model, images).numpy()
        quant_pred = predict(qmodel.model, images).numpy()
        target = float_pred if self.config.oracle == "float" else labels.numpy()
        float_ok = float_pred == target
        return {"label": target, "usable": float_ok,
                "failing": float_ok & (quant_pred != target)}

    def _chunks(self, ranking: list[Neuron]) -> Iterator[list[Neuron]]:
        cfg = self.config
        ranking = ranking[: cfg.max_neurons] if cfg.max_neurons else ranking
        size, start = 1, 0
        while start < len(ranking):
            yield ranking[start:start + size]
            start += size
            if cfg.schedule == "doubling":
                size *= 2

    def _out_of_time(self, loop_start: float) -> bool:
        budget = self.config.time_budget_s
        return budget is not None and time.perf_counter() - loop_start > budget

    def _repair_chunk(self, candidate: QuantizedModel, chunk: list[Neuron],
                      images: torch.Tensor, targets: dict) -> tuple[list[NeuronChange], Step]:
        """Repair the chunk's neurons layer by layer in forward order, each layer's LPs built
        from the inputs that the already repaired earlier layers give it."""
        by_layer: dict[str, list[int]] = {}
        for neuron in sorted(chunk, key=lambda n: (candidate.layers.index(n.layer), n.index)):
            by_layer.setdefault(neuron.layer, []).append(neuron.index)
        changes, results = [], []
        for name, indices in by_layer.items():
            rows = self.config.max_rows if name == candidate.layers[-1] else \
                self.config.hidden_rows
            record = record_layers(candidate, [name], images, rows, self.config.seed)[name]
            jobs, owners = zip(*self._jobs(candidate, name, indices, record, targets))
            # fork: workers need no re-import (torch data loaders do the same on Linux), and
            # scripts without a __main__ guard keep working; the LP code uses no torch.
            solved = lp.solve_many(jobs, n_workers=self.config.n_workers, mp_context="fork")
            for (layer, neurons), result in zip(owners, solved):
                if result.objective_rounded < result.objective_unchanged:
                    changes += apply_result(candidate, layer, neurons, result)
            results += solved
        step = Step(chunk, float("nan"), False, len(results),
                    [r.solve_seconds for r in results], [(r.n_rows, r.n_cols) for r in results])
        return changes, step

    def _jobs(self, qmodel, name, indices, record: LayerRecord, targets):
        cfg, layer = self.config, qmodel.layer(name)
        rows = np.ones(len(record.image), dtype=bool)
        if cfg.failing_only:
            rows = targets["failing"][record.image]
        common = {"qmin": -layer.qmax, "qmax": layer.qmax, "norm": cfg.norm,
                  "integer": cfg.integer, "time_limit": cfg.time_limit}
        if cfg.lam is not None:
            common["lam"] = cfg.lam
        if cfg.kappa is not None:
            common["kappa"] = cfg.kappa
        is_output = name == qmodel.layers[-1]
        weight = layer.weight_int.reshape(layer.out_features, -1).numpy().astype(np.int64)
        scale = layer.weight_scale.numpy().astype(np.float64)
        bias = layer.dequantized_bias().numpy().astype(np.float64)
        if is_output and cfg.output_formulation == "margin":
            keep = rows & targets["usable"][record.image]
            yield lp.LPProblem("margin", dict(
                features=record.inputs[keep], labels=targets["label"][record.image][keep],
                weight_int=weight, weight_scale=scale, bias=bias, neurons=list(indices),
                max_rows=cfg.max_rows, **common)), (name, list(indices))
            return
        mode = cfg.output_formulation if is_output else cfg.hidden_formulation
        real = rounding_domain(qmodel, name) if cfg.weight_domain == "rounding" else None
        for c in indices:
            bounds = None if real is None else (np.floor(real[c]) - weight[c],
                                                np.ceil(real[c]) - weight[c])
            yield lp.LPProblem("neuron", dict(
                inputs=record.inputs[rows][:, record.columns(c)],
                target=record.float_out[rows, c], weight_int=weight[c],
                weight_scale=float(scale[c]), bias=float(bias[c]), mode=mode,
                max_rows=cfg.max_rows if is_output else cfg.hidden_rows, delta_bounds=bounds,
                **common)), (name, [c])


def rounding_domain(qmodel: QuantizedModel, name: str) -> np.ndarray:
    """Each weight of layer `name` in integer units, before rounding: w / s (out, fan_in)."""
    layer, float_layer = qmodel.layer(name), qmodel.float_layer(name)
    w = float_layer.weight.detach().double().reshape(layer.out_features, -1)
    return (w / layer.weight_scale.double()[:, None]).numpy()


def apply_result(qmodel: QuantizedModel, name: str, indices: list[int],
                 result: lp.LPResult) -> list[NeuronChange]:
    """Write an LP's integer deltas into the layer; returns the changes that are not zero."""
    layer = qmodel.layer(name)
    delta_w = np.atleast_2d(np.asarray(result.delta_weight, dtype=np.int64))
    delta_b = np.atleast_1d(np.asarray(result.delta_bias, dtype=np.float64))
    changes = []
    for row, c in enumerate(indices):
        d = torch.from_numpy(delta_w[row]).reshape(layer.weight_int[c].shape)
        new = torch.clamp(layer.weight_int[c].long() + d, -layer.qmax, layer.qmax)
        bias_steps = int(round(delta_b[row] / layer.bias_scale()[c].item()))
        applied = new - layer.weight_int[c].long()
        if not applied.any() and bias_steps == 0:
            continue
        layer.weight_int[c] = new.to(layer.weight_int.dtype)
        layer.bias_int[c] += bias_steps
        changes.append(NeuronChange(Neuron(name, c), int((applied != 0).sum()),
                                    int(applied.abs().sum()), int(applied.abs().max()),
                                    bias_steps, result.status, result.solve_seconds))
    return changes
