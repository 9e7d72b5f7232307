"""Spectrum counts and the suspiciousness metrics that turn them into a ranking of neurons.

Notation of the fault-localization literature, per neuron:

    ef  failed_deviating        failing inputs on which the neuron deviates
    ep  passed_deviating        passing inputs on which the neuron deviates
    nf  failed_not_deviating    failing inputs on which it does not deviate
    np  passed_not_deviating    passing inputs on which it does not deviate
    F = ef + nf (n_failed),  P = ep + np (n_passed)

A metric is a function `metric(counts, **params) -> float64 array` (one score per neuron, higher
is more suspicious), registered by name with `@register_metric("name")`. Every term whose
denominator is 0 contributes 0 (`safe_divide`), so scores are always finite.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.neurons import Neuron
from qnnrepair.registry import Registry

Metric = Callable[..., np.ndarray]

METRICS = Registry("metric")


@dataclass(frozen=True, eq=False)
class SpectrumCounts:
    """Per-neuron spectrum counts (ef, ep, nf, np) of one layer, as read-only int64 arrays.

    failed_deviating (ef), passed_deviating (ep), failed_not_deviating (nf),
    passed_not_deviating (np): all 1-d, one entry per neuron, same length.
    GradedSpectrumCounts holds fractional counts (sums of graded deviations in [0, 1]).
    """

    graded: ClassVar[bool] = False

    failed_deviating: np.ndarray
    passed_deviating: np.ndarray
    failed_not_deviating: np.ndarray
    passed_not_deviating: np.ndarray

    def __post_init__(self) -> None:
        length = None
        for field in fields(self):
            array = np.array(getattr(self, field.name), copy=True)
            if array.size == 0:
                array = array.astype(np.int64)
            kinds = (np.integer, np.floating) if self.graded else (np.integer,)
            if array.ndim != 1 or not any(np.issubdtype(array.dtype, k) for k in kinds):
                raise QnnRepairError(
                    f"{type(self).__name__}.{field.name} must be a 1-d "
                    f"{'real' if self.graded else 'integer'} array, "
                    f"got dtype {array.dtype} and shape {array.shape}"
                    + ("" if self.graded else "; fractional counts are GradedSpectrumCounts")
                )
            if self.graded and not np.isfinite(array).all():
                raise QnnRepairError(f"{type(self).__name__}.{field.name} is not all finite")
            if (array < 0).any():
                raise QnnRepairError(f"SpectrumCounts.{field.name} has negative counts")
            if length is not None and array.shape[0] != length:
                raise QnnRepairError(
                    f"SpectrumCounts arrays differ in length: {field.name} has "
                    f"{array.shape[0]} neurons, failed_deviating has {length}"
                )
            length = array.shape[0]
            array = array.astype(np.float64 if self.graded else np.int64)
            array.flags.writeable = False
            object.__setattr__(self, field.name, array)

    @classmethod
    def zeros(cls, n_neurons: int) -> SpectrumCounts:
        zero = np.zeros(n_neurons, dtype=np.int64)
        return cls(zero, zero, zero, zero)

    @classmethod
    def concatenate(cls, parts: Sequence[SpectrumCounts]) -> SpectrumCounts:
        """The counts of several layers as one list of neurons, in the given order."""
        if not parts:
            return cls.zeros(0)
        kind = GradedSpectrumCounts if any(part.graded for part in parts) else cls
        return kind(
            *(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls))
        )

    @property
    def n_neurons(self) -> int:
        return int(self.failed_deviating.shape[0])

    @property
    def n_failed(self) -> np.ndarray:
        """F = ef + nf per neuron (the same for every neuron of one recorded layer)."""
        return self.failed_deviating + self.failed_not_deviating

    @property
    def n_passed(self) -> np.ndarray:
        """P = ep + np per neuron (the same for every neuron of one recorded layer)."""
        return self.passed_deviating + self.passed_not_deviating

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpectrumCounts):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays: equal by value, not hashable

    def __repr__(self) -> str:
        def span(values: np.ndarray) -> str:
            if values.size == 0:
                return "-"
            low, high = values.min(), values.max()
            return f"{low:g}" if low == high else f"{low:g}..{high:g}"

        return (
            f"{type(self).__name__}(n_neurons={self.n_neurons}, n_failed={span(self.n_failed)}, "
            f"n_passed={span(self.n_passed)})"
        )


class GradedSpectrumCounts(SpectrumCounts):
    """SpectrumCounts whose entries are non-negative reals, stored as float64: with a graded
    state rule a neuron deviates on an input by a degree in [0, 1], and ef is the sum of those
    degrees over the failing inputs (nf = F - ef, and so on). Every metric reads them as is."""

    graded: ClassVar[bool] = True


def safe_divide(numerator: Any, denominator: Any) -> np.ndarray:
    """numerator / denominator elementwise in float64, 0 wherever the denominator is 0."""
    num, den = np.broadcast_arrays(
        np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    )
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: make `metric(counts, **params) -> scores` available under `name`."""
    return METRICS.register(name)


def get_metric(name: str) -> Metric:
    return METRICS.lookup(name)


def metric_parameters(name: str) -> dict[str, Any]:
    """The parameters a metric takes besides the counts, with their defaults."""
    signature = inspect.signature(get_metric(name))
    return {p.name: p.default for p in list(signature.parameters.values())[1:]}


def compute_scores(metric: str, counts: SpectrumCounts, **params: Any) -> np.ndarray:
    """Scores of one metric for every neuron of `counts`, checked to be finite."""
    function = get_metric(metric)
    known = metric_parameters(metric)
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no parameters"
        raise QnnRepairError(
            f"metric {metric!r} has no parameter {', '.join(map(repr, unknown))}; it takes {takes}"
        )
    scores = np.asarray(function(counts, **params), dtype=np.float64)
    if scores.shape != (counts.n_neurons,):
        raise QnnRepairError(
            f"metric {metric!r} returned shape {scores.shape}, expected ({counts.n_neurons},)"
        )
    if not np.isfinite(scores).all():
        raise QnnRepairError(
            f"metric {metric!r} with {params} gave non-finite scores; use smaller parameters"
        )
    return scores


def score_layers(
    counts: Mapping[str, SpectrumCounts], metric: str, *, seed: int = 0, **params: Any
) -> dict[str, np.ndarray]:
    """Scores per layer. The layers are scored as one list of neurons (in mapping order), so a
    seeded metric such as `random` draws one independent score per neuron of the whole net;
    `seed` is passed to metrics that take one."""
    layers = list(counts)
    if "seed" in metric_parameters(metric):
        params = {"seed": seed, **params}
    scores = compute_scores(
        metric, SpectrumCounts.concatenate([counts[k] for k in layers]), **params
    )
    result: dict[str, np.ndarray] = {}
    start = 0
    for layer in layers:
        stop = start + counts[layer].n_neurons
        result[layer] = scores[start:stop]
        start = stop
    return result


def rank_neurons(scores: Mapping[str, np.ndarray], layer_order: Sequence[str]) -> list[Neuron]:
    """All neurons by descending score; ties broken by position in `layer_order`, then index.

    Every layer of `scores` must appear exactly once in `layer_order` (which may name more).
    """
    position: dict[str, int] = {}
    for layer in layer_order:
        if layer in position:
            raise QnnRepairError(f"layer {layer!r} appears twice in layer_order")
        position[layer] = len(position)
    missing = [layer for layer in scores if layer not in position]
    if missing:
        raise QnnRepairError(f"layers {missing} have scores but are not in layer_order")
    ordered = sorted(scores, key=position.__getitem__)
    values, layer_ids, indices = [], [], []
    for layer in ordered:
        layer_scores = np.asarray(scores[layer], dtype=np.float64)
        if layer_scores.ndim != 1:
            raise QnnRepairError(f"scores of layer {layer!r} must be 1-d, got {layer_scores.shape}")
        if not np.isfinite(layer_scores).all():
            raise QnnRepairError(f"scores of layer {layer!r} are not all finite")
        values.append(layer_scores)
        layer_ids.append(np.full(layer_scores.shape, position[layer], dtype=np.int64))
        indices.append(np.arange(layer_scores.shape[0], dtype=np.int64))
    if not values:
        return []
    value, layer_id, index = (np.concatenate(v) for v in (values, layer_ids, indices))
    # np.lexsort sorts by the last key first: score descending, then layer order, then index.
    order = np.lexsort((index, layer_id, -value))
    layer_of = {position[layer]: layer for layer in ordered}
    return [Neuron(layer_of[int(layer_id[i])], int(index[i])) for i in order]


# --- the metrics -------------------------------------------------------------------------------


def _counts(counts: SpectrumCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ef, ep, nf, np) as float64, so products of large counts cannot overflow int64."""
    return tuple(  # type: ignore[return-value]
        getattr(counts, f.name).astype(np.float64) for f in fields(counts)
    )


@register_metric("tarantula")
def tarantula(counts: SpectrumCounts) -> np.ndarray:
    """(ef/F) / (ef/F + ep/P)"""
    ef, ep, nf, np_ = _counts(counts)
    failed_ratio = safe_divide(ef, ef + nf)
    passed_ratio = safe_divide(ep, ep + np_)
    return safe_divide(failed_ratio, failed_ratio + passed_ratio)


@register_metric("ochiai")
def ochiai(counts: SpectrumCounts) -> np.ndarray:
    """ef / sqrt(F * (ef + ep))"""
    ef, ep, nf, _ = _counts(counts)
    return safe_divide(ef, np.sqrt((ef + nf) * (ef + ep)))


@register_metric("dstar")
def dstar(counts: SpectrumCounts, star: float = 2.0) -> np.ndarray:
    """ef^star / (ep + nf). Note: 0 when ep + nf = 0 (the zero-denominator rule), although the
    classic D* treats a neuron deviating on every failing and no passing input as infinitely
    suspicious."""
    if isinstance(star, bool) or not isinstance(star, (int, float)) or not 0 < star < math.inf:
        raise QnnRepairError(f"dstar needs a positive finite star, got {star!r}")
    ef, ep, nf, _ = _counts(counts)
    with np.errstate(over="ignore"):
        return safe_divide(ef**star, ep + nf)


@register_metric("jaccard")
def jaccard(counts: SpectrumCounts) -> np.ndarray:
    """ef / (ef + ep + nf)"""
    ef, ep, nf, _ = _counts(counts)
    return safe_divide(ef, ef + ep + nf)


@register_metric("ample")
def ample(counts: SpectrumCounts) -> np.ndarray:
    """|ef/F - ep/P|"""
    ef, ep, nf, np_ = _counts(counts)
    return np.abs(safe_divide(ef, ef + nf) - safe_divide(ep, ep + np_))


@register_metric("euclid")
def euclid(counts: SpectrumCounts) -> np.ndarray:
    """sqrt(ef + np)"""
    ef, _, _, np_ = _counts(counts)
    return np.sqrt(ef + np_)


@register_metric("wong3")
def wong3(counts: SpectrumCounts) -> np.ndarray:
    """ef - h, h = ep (ep <= 2); 2 + 0.1 (ep - 2) (2 < ep <= 10); 2.8 + 0.001 (ep - 10) (ep > 10)"""
    ef, ep, _, _ = _counts(counts)
    h = np.where(ep <= 2, ep, np.where(ep <= 10, 2 + 0.1 * (ep - 2), 2.8 + 0.001 * (ep - 10)))
    return ef - h


@register_metric("random")
def random(counts: SpectrumCounts, seed: int = 0) -> np.ndarray:
    """Uniform scores in [0, 1) from `seed`, ignoring the counts: the control every metric must
    beat."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise QnnRepairError(f"the random metric needs a non-negative integer seed, got {seed!r}")
    return np.random.default_rng(int(seed)).random(counts.n_neurons)
