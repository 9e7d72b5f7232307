"""The repair loop: localize, solve LPs for the most suspicious neurons, keep what validation
accepts (DESIGN sections 1 and 4)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import accuracy, predict
from qnnrepair.localization import SpectrumLocalizer
from qnnrepair.neurons import Neuron
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel, batches
from qnnrepair.repair import lp
from qnnrepair.repair.activations import LayerRecord, record_layers
from qnnrepair.repair.config import RepairConfig
from qnnrepair.repair.summary import RowSummary

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
        check_validation_labels(validation_labels)
        self.timings_: dict[str, float] = {}
        layers = self.repair_layers(qmodel)
        self.localizer_ = SpectrumLocalizer(metric=cfg.metric, state_rule=cfg.state_rule,
                                            oracle=cfg.oracle, seed=cfg.seed)
        self.localizer_.fit(qmodel.float_model, qmodel.model, layers,
                            list(zip(batches(repair_images, 250), batches(repair_labels, 250))),
                            show_progress=show_progress)
        self.timings_["localize"] = time.perf_counter() - start
        targets = self._targets(qmodel, repair_images, repair_labels)

        quant_val = accuracy(qmodel.model, validation_images, validation_labels)
        float_val = accuracy(qmodel.float_model, validation_images, validation_labels)
        best, best_model = quant_val, qmodel.copy()
        self.steps_: list[Step] = []
        self.changes_: list[NeuronChange] = []
        self._cache: dict[tuple, lp.LPResult] = {}
        self._float_rows: dict[str, np.ndarray] = {}
        loop_start = time.perf_counter()
        ranking = self.localizer_.ranking_[: cfg.max_neurons or None]
        for n in progress(self.schedule(len(ranking)), show_progress, desc="repair"):
            if best >= float_val or self._out_of_time(loop_start):
                break
            step_start = time.perf_counter()
            candidate, changes, step = self._candidate(qmodel, ranking[:n], repair_images,
                                                       targets)
            step.validation_accuracy = accuracy(candidate.model, validation_images,
                                                validation_labels)
            step.accepted = bool(changes) and step.validation_accuracy >= best
            step.seconds = time.perf_counter() - step_start
            self.steps_.append(step)
            logger.info("top %d neurons: validation %.2f%% (best %.2f%%) %s", n,
                        step.validation_accuracy, best, "kept" if step.accepted else "rejected")
            if step.accepted:
                best, best_model, self.changes_ = step.validation_accuracy, candidate, changes
        self.timings_["repair_loop"] = time.perf_counter() - loop_start
        self.timings_["total"] = time.perf_counter() - start
        self.repaired_ = best_model
        self.validation_accuracy_ = {"float": float_val, "quantized": quant_val, "repaired": best}
        del self._cache, self._float_rows
        return self

    def repair_neurons(self, qmodel: QuantizedModel, neurons: list[Neuron],
                       repair_images: torch.Tensor, repair_labels: torch.Tensor
                       ) -> tuple[QuantizedModel, list[NeuronChange], Step]:
        """`qmodel` with exactly `neurons` repaired and no validation: the acceptance loop's
        candidate for them, its changes, and its LP count and solve times. For experiments that
        compare rankings at a fixed number of neurons; every LP is solved afresh."""
        self._cache, self._float_rows = {}, {}
        targets = self._targets(qmodel, repair_images, repair_labels)
        try:
            return self._candidate(qmodel, neurons, repair_images, targets)
        finally:
            del self._cache, self._float_rows

    def schedule(self, n_neurons: int) -> list[int]:
        """How many top neurons each candidate repairs: 1, g, g^2, ... and finally all of them
        (geometric), or 1, 2, 3, ... (linear)."""
        if self.config.schedule == "linear":
            return list(range(1, n_neurons + 1))
        sizes, n = [], 1
        while n < n_neurons:
            sizes.append(n)
            n *= self.config.growth
        return sizes + [n_neurons] if n_neurons else []

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

    def _out_of_time(self, loop_start: float) -> bool:
        budget = self.config.time_budget_s
        return budget is not None and time.perf_counter() - loop_start > budget

    def _candidate(self, qmodel: QuantizedModel, neurons: list[Neuron], images: torch.Tensor,
                   targets: dict) -> tuple[QuantizedModel, list[NeuronChange], Step]:
        """`qmodel` with `neurons` repaired layer by layer in forward order, each layer's LPs
        built on the inputs that the repaired earlier layers give it.

        An LP depends only on its layer and on which neurons upstream were repaired, so its
        solution is cached under that key and reused by every larger candidate.
        """
        candidate = qmodel.copy()
        by_layer: dict[str, list[int]] = {}
        for neuron in sorted(neurons, key=lambda n: (qmodel.layers.index(n.layer), n.index)):
            by_layer.setdefault(neuron.layer, []).append(neuron.index)
        changes, solved, upstream = [], [], frozenset()
        for name, indices in by_layer.items():
            jobs = list(self._jobs(candidate, name, indices, targets, images))
            keys = [(name, tuple(owner), upstream) for _, owner, _ in jobs]
            missing = [(key, make, finish) for key, (make, _, finish) in zip(keys, jobs)
                       if key not in self._cache]
            if missing:
                # fork: workers need no re-import (torch data loaders do the same on Linux),
                # and scripts without a __main__ guard keep working; the LP code uses no torch.
                results = lp.solve_many([make() for _, make, _ in missing],
                                        n_workers=self.config.n_workers, mp_context="fork")
                results = [finish(r) for (_, _, finish), r in zip(missing, results)]
                self._cache.update(zip((key for key, _, _ in missing), results))
                solved += results
            for key in keys:
                result = self._cache[key]
                if result.objective_rounded < result.objective_unchanged:
                    changes += apply_result(candidate, name, list(key[1]), result)
            upstream = upstream | {(name, i) for i in indices}
        step = Step(neurons, float("nan"), False, len(solved),
                    [r.solve_seconds for r in solved], [(r.n_rows, r.n_cols) for r in solved])
        return candidate, changes, step

    def _jobs(self, qmodel, name, indices, targets, images):
        """(make_problem, neuron indices, finish) per LP of layer `name`. Problems are made
        lazily: the layer is recorded (one forward pass) only if some LP is not cached; `finish`
        completes a solved LP's result (the bias of a summarized LP)."""
        cfg, layer = self.config, qmodel.layer(name)
        is_output = name == qmodel.layers[-1]
        n_rows = cfg.max_rows if is_output else cfg.hidden_rows
        mode = cfg.output_formulation if is_output else cfg.hidden_formulation
        summarize = mode == "match"
        # A summary carries every sampled row, so it draws from the whole repair set (fewer
        # images over-fitted at W4A4: validation 95.8 % from 256 images, 96.6 % from 1,000);
        # raw-row LPs keep one image per row.
        def recorded() -> LayerRecord:
            r = record_subset(qmodel, name, images,
                              cfg.summary_samples if summarize else n_rows, cfg.seed,
                              max_images=len(images) if summarize else n_rows,
                              float_out=self._float_rows)
            self._float_rows.setdefault(name, r.float_out)  # the float model never changes
            return r

        record = _Lazy(recorded)
        common = {"qmin": -layer.qmax, "qmax": layer.qmax, "norm": cfg.norm,
                  "integer": cfg.integer, "time_limit": cfg.time_limit, "max_rows": n_rows}
        if cfg.lam is not None:
            common["lam"] = cfg.lam
        if cfg.kappa is not None:
            common["kappa"] = cfg.kappa
        weight = layer.weight_int.reshape(layer.out_features, -1).numpy().astype(np.int64)
        scale = layer.weight_scale.numpy().astype(np.float64)
        bias = layer.dequantized_bias().numpy().astype(np.float64)

        def rows(r: LayerRecord) -> np.ndarray:
            keep = targets["failing"][r.image] if cfg.failing_only else \
                np.ones(len(r.image), bool)
            return keep & targets["usable"][r.image] if is_output else keep

        if is_output and cfg.output_formulation == "margin":
            def margin():
                r = record()
                keep = rows(r)
                return lp.LPProblem("margin", dict(
                    features=r.inputs[keep], labels=targets["label"][r.image][keep],
                    weight_int=weight, weight_scale=scale, bias=bias, neurons=list(indices),
                    **common))
            yield margin, list(indices), _same
            return
        real = rounding_domain(qmodel, name) if cfg.weight_domain == "rounding" else None
        if summarize:
            summaries: dict[int, RowSummary] = {}

            def summary(c: int) -> RowSummary:
                r = record()
                cols = r.columns(c)
                if cols.start not in summaries:  # one per group of a grouped conv
                    summaries[cols.start] = RowSummary.of(r.inputs[:, cols], n_rows, cfg.seed)
                return summaries[cols.start]

            for c in indices:
                yield from self._summarized_job(record, summary, c, weight[c], float(scale[c]),
                                                float(bias[c]), real, common)
            return
        for c in indices:
            def neuron(c=c):
                r = record()
                keep = rows(r)
                bounds = None if real is None else (np.floor(real[c]) - weight[c],
                                                    np.ceil(real[c]) - weight[c])
                return lp.LPProblem("neuron", dict(
                    inputs=r.inputs[keep][:, r.columns(c)], target=r.float_out[keep, c],
                    weight_int=weight[c], weight_scale=float(scale[c]), bias=float(bias[c]),
                    mode=mode, delta_bounds=bounds, **common))
            yield neuron, [c], _same

    @staticmethod
    def _summarized_job(record, summary, c, weight, scale, bias, real, common):
        """The match LP of neuron c on the summary rows (see repair/summary.py)."""
        bounds = None if real is None else (np.floor(real[c]) - weight, np.ceil(real[c]) - weight)
        residual = _Lazy(lambda: record().float_out[:, c] - (
            scale * (record().inputs[:, record().columns(c)] @ weight) + bias))

        def make():
            rows, z = summary(c).rows, summary(c).rhs(residual())
            # a(d) - target = s A (q + d) + bias - target = s A d - z: pass target accordingly
            target = scale * (rows @ weight) + bias + z
            return lp.LPProblem("neuron", dict(
                inputs=rows, target=target, weight_int=weight, weight_scale=scale, bias=bias,
                mode="match", delta_bounds=bounds, fit_bias=False,
                **{**common, "max_rows": len(rows)}))

        def finish(result: lp.LPResult) -> lp.LPResult:
            shift = scale * float(summary(c).mean @ result.delta_weight)
            return replace(result, delta_bias=float(residual().mean()) - shift)

        yield make, [c], finish


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


def _same(result: lp.LPResult) -> lp.LPResult:
    return result


class _Lazy:
    """A value computed on first use."""

    def __init__(self, make):
        self.make, self.done, self.value = make, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done = self.make(), True
        return self.value


def record_subset(qmodel: QuantizedModel, name: str, images: torch.Tensor, n_rows: int,
                  seed: int, max_images: int,
                  float_out: dict[str, np.ndarray] | None = None) -> LayerRecord:
    """Record about `n_rows` rows of layer `name` from at most `max_images` images spread
    evenly over the repair set: the forward passes are the slowest part of a repair, and a few
    hundred images with several positions each cover the inputs well."""
    n_images = min(max_images, len(images))
    chosen = np.unique(np.linspace(0, len(images) - 1, n_images).round().astype(np.int64))
    record = record_layers(qmodel, [name], images[torch.from_numpy(chosen)], n_rows, seed,
                           float_out=float_out)[name]
    record.image = chosen[record.image]
    return record


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
