"""One candidate of the acceptance loop: the quantized model with a set of neurons repaired.

Layers are repaired in forward order, each layer's LPs built on the inputs that the repaired
earlier layers give it. An LP depends only on its layer, its neurons and which neurons upstream
were repaired, so its result is cached under that key (in a FitCache owned by one fit) and
reused by every larger candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qnnrepair.evaluation import predict
from qnnrepair.neurons import Neuron
from qnnrepair.outcomes import outcomes
from qnnrepair.quantization import QuantizedModel
from qnnrepair.repair.activations import LayerRecord, record_layers
from qnnrepair.repair.config import RepairConfig
from qnnrepair.repair.lp import LayerLP, LPBackend, LPResult, get_formulation


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
    """Per repair image: the class to aim for, whether F gets it, whether it fails in Q."""

    label: np.ndarray
    usable: np.ndarray
    failing: np.ndarray

    @classmethod
    def of(cls, qmodel: QuantizedModel, images: torch.Tensor, labels: torch.Tensor,
           oracle: str) -> Targets:
        seen = outcomes(predict(qmodel.float_model, images), predict(qmodel.model, images),
                        labels, oracle)
        return cls(seen.target.numpy(), seen.usable.numpy(), seen.failing.numpy())


@dataclass
class FitCache:
    """What one fit reuses across candidates: solved LPs by (layer, neurons, upstream), and
    each layer's float rows (the float model never changes)."""

    results: dict[tuple, LPResult] = field(default_factory=dict)
    float_rows: dict[str, np.ndarray] = field(default_factory=dict)


def build_candidate(qmodel: QuantizedModel, neurons: list[Neuron], images: torch.Tensor,
                    targets: Targets, config: RepairConfig, backend: LPBackend,
                    cache: FitCache) -> tuple[QuantizedModel, list[NeuronChange], list[LPResult]]:
    """`qmodel` with `neurons` repaired; its changes and the LPs solved for it."""
    candidate = qmodel.copy()
    changes, solved, upstream = [], [], frozenset()
    for name, indices in by_layer(qmodel, neurons).items():
        is_output = name == qmodel.layers[-1]
        lp = config.lp
        formulation = get_formulation(lp.output_formulation if is_output else
                                      lp.hidden_formulation, output=is_output)
        owners = formulation.owners(indices)
        keys = [(name, owner, upstream) for owner in owners]
        missing = [(key, owner) for key, owner in zip(keys, owners) if key not in cache.results]
        if missing:
            layer = layer_lp(candidate, name, images, targets, config, cache)
            results = backend.solve([formulation.build(layer, owner) for _, owner in missing])
            cache.results.update(zip((key for key, _ in missing), results))
            solved += results
        for key in keys:
            result = cache.results[key]
            if result.objective_rounded < result.objective_unchanged:
                changes += apply_result(candidate, name, list(key[1]), result)
        upstream = upstream | {(name, i) for i in indices}
    return candidate, changes, solved


def by_layer(qmodel: QuantizedModel, neurons: list[Neuron]) -> dict[str, list[int]]:
    """Neuron indices per layer, layers in forward order, indices ascending."""
    grouped: dict[str, list[int]] = {}
    for neuron in sorted(neurons, key=lambda n: (qmodel.layers.index(n.layer), n.index)):
        grouped.setdefault(neuron.layer, []).append(neuron.index)
    return grouped


def layer_lp(qmodel: QuantizedModel, name: str, images: torch.Tensor, targets: Targets,
             config: RepairConfig, cache: FitCache) -> LayerLP:
    """Layer `name` of the candidate as the formulations see it; rows recorded on demand."""
    layer, lp = qmodel.layer(name), config.lp
    is_output = name == qmodel.layers[-1]
    qmin, qmax = grid(layer)
    recorded: dict[tuple, LayerRecord] = {}

    def record(n_samples: int, max_images: int | None) -> LayerRecord:
        key = (n_samples, max_images)
        if key not in recorded:
            if max_images is None:
                max_images = lp.summary_images(len(images), images[0, 0].numel())
            r = record_subset(qmodel, name, images, n_samples, config.seed,
                              max_images=max_images,
                              float_out=cache.float_rows)
            cache.float_rows.setdefault(name, r.float_out)
            recorded[key] = r
        return recorded[key]

    return LayerLP(
        name=name, is_output=is_output,
        weight=layer.weight_int.reshape(layer.out_features, -1).numpy().astype(np.int64),
        scale=layer.weight_scale.numpy().astype(np.float64),
        bias=layer.dequantized_bias().numpy().astype(np.float64),
        domain=weight_domain(qmodel, name) if lp.weight_domain == "rounding" else None,
        target=targets.label, usable=targets.usable, failing=targets.failing,
        record=record, n_rows=lp.max_rows if is_output else lp.hidden_rows,
        options=lp.options(qmax, qmin), config=lp, seed=config.seed)


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
        applied = new - layer.weight_int[c].long()
        if not applied.any() and bias_steps == 0:
            continue
        layer.weight_int[c] = new.to(layer.weight_int.dtype)
        layer.bias_int[c] += bias_steps
        changes.append(NeuronChange(Neuron(name, c), int((applied != 0).sum()),
                                    int(applied.abs().sum()), int(applied.abs().max()),
                                    bias_steps, result.status, result.solve_seconds))
    return changes
