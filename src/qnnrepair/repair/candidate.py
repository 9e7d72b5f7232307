"""One candidate of the acceptance loop: the quantized model with a set of neurons repaired.

Layers are repaired in forward order, each layer's LPs built on the inputs that the repaired
earlier layers give it (in one forward pass of the candidate where the formulations allow).
An LP depends only on its layer, its neurons and which neurons upstream were repaired, so its
result is cached under that key (in a FitCache owned by one fit) and reused by every larger
candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import torch

from qnnrepair.data.splits import spread
from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import predict
from qnnrepair.memory import release_free_memory
from qnnrepair.neurons import Neuron
from qnnrepair.outcomes import Outcomes, outcomes
from qnnrepair.quantization import QuantizedModel
from qnnrepair.repair.activations import (
    LayerRecord,
    layer_record,
    record_float_rows,
    record_in_pass,
    record_layers,
)
from qnnrepair.repair.config import RepairConfig
from qnnrepair.repair.lp import Formulation, LayerLP, LPBackend, LPResult, get_formulation


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
class Targets:
    """Per repair image: the class to aim for (`label`), whether F gets it (`usable`), whether
    it fails in Q (`failing`). Found on first use, by predicting both models over R: the
    default hidden-layer LPs ("match") never ask, so a default fit does not pay for them."""

    find: Callable[[], Outcomes]

    @classmethod
    def of(cls, qmodel: QuantizedModel, images: torch.Tensor, labels: torch.Tensor,
           oracle: str) -> Targets:
        return cls(lambda: outcomes(predict(qmodel.float_model, images),
                                    predict(qmodel.model, images), labels, oracle))

    @cached_property
    def _seen(self) -> Outcomes:
        return self.find()

    @property
    def label(self) -> np.ndarray:
        return self._seen.target.numpy()

    @property
    def usable(self) -> np.ndarray:
        return self._seen.usable.numpy()

    @property
    def failing(self) -> np.ndarray:
        return self._seen.failing.numpy()


@dataclass
class FitCache:
    """What one fit reuses across candidates: solved LPs by (layer, neurons, upstream), and
    each layer's float rows by (layer, rows, images) (the float model never changes).

    `float_layers`: the layers whose in-pass float rows the fit will need. The first candidate
    that needs any records them all, in one float pass, instead of one partial pass per
    candidate (a layer's rows do not depend on which layers are recorded with it)."""

    results: dict[tuple, LPResult] = field(default_factory=dict)
    float_rows: dict[tuple, np.ndarray] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)


def build_candidate(qmodel: QuantizedModel, neurons: list[Neuron], images: torch.Tensor,
                    targets: Targets, config: RepairConfig, backend: LPBackend,
                    cache: FitCache) -> tuple[QuantizedModel, list[NeuronChange], list[LPResult]]:
    """`qmodel` with `neurons` repaired; its changes and the LPs solved for it."""
    build = _Build(qmodel.copy(), images, targets, config, backend, cache)
    build.run(plan(qmodel, neurons, config))
    return build.candidate, build.changes, build.solved


@dataclass
class LayerStep:
    """One layer of a candidate: its formulation and one cache key per LP, (layer, the LP's
    neurons, the neurons repaired upstream: they change its inputs)."""

    name: str
    formulation: Formulation
    keys: list[tuple]


def pass_layers(qmodel: QuantizedModel, neurons: list[Neuron], config: RepairConfig) -> list[str]:
    """The layers of `neurons` whose rows are recorded in a candidate's pass (FitCache)."""
    return [step.name for step in plan(qmodel, neurons, config) if step.formulation.pass_rows]


def plan(qmodel: QuantizedModel, neurons: list[Neuron], config: RepairConfig) -> list[LayerStep]:
    """The layers of a candidate in forward order."""
    steps, upstream = [], frozenset()
    for name, indices in by_layer(qmodel, neurons).items():
        is_output = name == qmodel.layers[-1]
        formulation = get_formulation(config.lp.output_formulation if is_output else
                                      config.lp.hidden_formulation, output=is_output)
        keys = [(name, owner, upstream) for owner in formulation.owners(indices)]
        steps.append(LayerStep(name, formulation, keys))
        upstream = upstream | {(name, i) for i in indices}
    return steps


class _Build:
    """A candidate under construction. Layers are repaired in forward order; each layer whose
    LPs are not cached needs its rows recorded on the candidate as repaired so far. Layers
    whose formulation records the summary rows (`pass_rows`) are recorded and repaired inside
    one forward pass (activations.record_in_pass): one pass per candidate instead of one per
    layer, which is what a 52-layer ImageNet network needs. Any other layer is recorded by a
    pass of its own."""

    def __init__(self, candidate: QuantizedModel, images: torch.Tensor, targets: Targets,
                 config: RepairConfig, backend: LPBackend, cache: FitCache) -> None:
        self.candidate, self.images, self.targets = candidate, images, targets
        self.config, self.backend, self.cache = config, backend, cache
        self.changes: list[NeuronChange] = []
        self.solved: list[LPResult] = []

    def run(self, steps: list[LayerStep]) -> None:
        i = 0
        while i < len(steps):
            step = steps[i]
            if not self.missing(step):
                self.finish(step, None)
                i += 1
            elif not step.formulation.pass_rows:
                self.finish(step, self.own_record(step.name))
                i += 1
            else:  # a pass through the layers up to the next one that needs a pass of its own
                j = i
                while j < len(steps) and (steps[j].formulation.pass_rows
                                          or not self.missing(steps[j])):
                    j += 1
                last = max(k for k in range(i, j) if self.missing(steps[k]))
                self.in_pass(steps[i:last + 1])
                i = last + 1

    def missing(self, step: LayerStep) -> list[tuple]:
        return [key for key in step.keys if key not in self.cache.results]

    def finish(self, step: LayerStep, record) -> None:
        """Solve the layer's LPs that are not cached and apply all of them."""
        missing = self.missing(step)
        if missing:
            layer = layer_lp(self.candidate, step.name, self.targets, self.config, record)
            results = self.backend.solve([step.formulation.build(layer, key[1])
                                          for key in missing])
            self.cache.results.update(zip(missing, results))
            self.solved += results
        for key in step.keys:
            result = self.cache.results[key]
            if result.objective_rounded < result.objective_unchanged:
                self.changes += apply_result(self.candidate, step.name, list(key[1]), result)

    def in_pass(self, steps: list[LayerStep]) -> None:
        lp, seed = self.config.lp, self.config.seed
        n_rows = lp.summary_samples
        chosen = spread(len(self.images), self.summary_images())
        subset = self.images[torch.from_numpy(chosen)]
        rows_key = (n_rows, len(chosen))
        names = [step.name for step in steps]
        absent = [s.name for s in steps if self.missing(s)
                  and (s.name, rows_key) not in self.cache.float_rows]
        if absent:
            absent += [name for name in self.cache.float_layers if name not in absent
                       and (name, rows_key) not in self.cache.float_rows]
            found = record_float_rows(self.candidate, absent, subset, n_rows, seed)
            self.cache.float_rows.update({(name, rows_key): rows for name, rows in found.items()})
        by_name, visited = dict(zip(names, steps)), []

        def visit(name: str, rows) -> None:
            layer = self.candidate.layer(name)

            def record(n_samples: int, max_images: int | None) -> LayerRecord:
                if (n_samples, max_images) != (n_rows, None):
                    raise QnnRepairError(
                        f"formulation {by_name[name].formulation.name!r} records rows "
                        f"({n_samples}, {max_images}) but is marked pass_rows: it may record "
                        f"only (summary_samples, None)")
                inputs, image = rows()
                return layer_record(layer, inputs, chosen[image],
                                    self.cache.float_rows[(name, rows_key)])

            self.finish(by_name[name], _once(record))
            visited.append(name)

        release_free_memory()  # the pass's large activations cannot reuse freed heap memory
        record_in_pass(self.candidate, names, subset, n_rows, seed, visit, stop=names[-1])
        if visited != names:
            raise QnnRepairError(f"the forward pass reached layers {visited} of {names}: the "
                                 "model's layers are not in the order it runs them")

    def summary_images(self) -> int:
        """How many repair images "match" rows come from (LPConfig.summary_images)."""
        return self.config.lp.summary_images(len(self.images), self.images[0, 0].numel())

    def own_record(self, name: str):
        """Rows of layer `name` recorded by a pass of their own, for any (rows, images)."""
        seed = self.config.seed

        def record(n_samples: int, max_images: int | None) -> LayerRecord:
            chosen = spread(len(self.images),
                            self.summary_images() if max_images is None else max_images)
            key = (name, (n_samples, len(chosen)))
            known = {name: self.cache.float_rows[key]} if key in self.cache.float_rows else None
            found = record_layers(self.candidate, [name], self.images[torch.from_numpy(chosen)],
                                  n_samples, seed, float_out=known)[name]
            self.cache.float_rows.setdefault(key, found.float_out)
            found.image = chosen[found.image]
            return found

        return _once(record)


def _once(record):
    """`record` computed once per argument pair."""
    done: dict[tuple, LayerRecord] = {}

    def cached(n_samples: int, max_images: int | None) -> LayerRecord:
        if (n_samples, max_images) not in done:
            done[(n_samples, max_images)] = record(n_samples, max_images)
        return done[(n_samples, max_images)]

    return cached


def by_layer(qmodel: QuantizedModel, neurons: list[Neuron]) -> dict[str, list[int]]:
    """Neuron indices per layer, layers in forward order, indices ascending."""
    grouped: dict[str, list[int]] = {}
    for neuron in sorted(neurons, key=lambda n: (qmodel.layers.index(n.layer), n.index)):
        grouped.setdefault(neuron.layer, []).append(neuron.index)
    return grouped


def layer_lp(qmodel: QuantizedModel, name: str, targets: Targets, config: RepairConfig,
             record) -> LayerLP:
    """Layer `name` of the candidate as the formulations see it; `record` gives its rows."""
    layer, lp = qmodel.layer(name), config.lp
    is_output = name == qmodel.layers[-1]
    qmin, qmax = grid(layer)
    return LayerLP(
        name=name, is_output=is_output,
        weight=layer.weight_int.reshape(layer.out_features, -1).numpy().astype(np.int64),
        scale=layer.weight_scale.numpy().astype(np.float64),
        bias=layer.dequantized_bias().numpy().astype(np.float64),
        domain=weight_domain(qmodel, name) if lp.weight_domain == "rounding" else None,
        targets=targets,
        record=record, n_rows=lp.max_rows if is_output else lp.hidden_rows,
        options=lp.options(qmax, qmin), config=lp, seed=config.seed)


def grid(layer) -> tuple[int, int]:
    """A layer's lowest and highest weight integer: [-qmax, qmax] for our own quantizer; a
    deployed file's (formats.layers.DeployedLayer) need not be symmetric."""
    return getattr(layer, "qmin", -layer.qmax), layer.qmax


def weight_domain(qmodel: QuantizedModel, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest integer each weight of layer `name` may take (out, fan_in):
    the floor and the ceiling of its float value w / s, so the LP revisits rounding directions
    as AdaRound does. When the float weights are the integers themselves (the float reference
    of a deployed file is its dequantized weights) there is no direction left to choose, and
    each weight may move one step either way instead."""
    layer, float_layer = qmodel.layer(name), qmodel.float_layer(name)
    w = float_layer.weight.detach().double().reshape(layer.out_features, -1)
    scaled = (w / layer.weight_scale.double()[:, None]).numpy()
    weight = layer.weight_int.reshape(layer.out_features, -1).numpy().astype(np.float64)
    if np.allclose(scaled, weight, rtol=0.0, atol=1e-3):
        return weight - 1.0, weight + 1.0
    return np.floor(scaled), np.ceil(scaled)


def apply_result(qmodel: QuantizedModel, name: str, indices: list[int],
                 result: LPResult) -> list[NeuronChange]:
    """Write an LP's integer deltas into the layer, clamped to the grid, and its bias delta
    rounded to the bias grid; returns the changes that are not zero."""
    layer = qmodel.layer(name)
    delta_w = np.atleast_2d(np.asarray(result.delta_weight, dtype=np.int64))
    delta_b = np.atleast_1d(np.asarray(result.delta_bias, dtype=np.float64))
    changes = []
    for row, c in enumerate(indices):
        d = torch.from_numpy(delta_w[row]).reshape(layer.weight_int[c].shape)
        new = torch.clamp(layer.weight_int[c].long() + d, *grid(layer))
        bias_steps = int(round(delta_b[row] / layer.bias_scale()[c].item()))
        if getattr(layer, "bias_fixed", False):  # a bias another layer of the file reads too
            bias_steps = 0
        applied = new - layer.weight_int[c].long()
        if not applied.any() and bias_steps == 0:
            continue
        layer.weight_int[c] = new.to(layer.weight_int.dtype)
        layer.bias_int[c] += bias_steps
        changes.append(NeuronChange(Neuron(name, c), int((applied != 0).sum()),
                                    int(applied.abs().sum()), int(applied.abs().max()),
                                    bias_steps, result.status, result.solve_seconds))
    return changes
