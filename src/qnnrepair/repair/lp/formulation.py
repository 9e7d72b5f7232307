"""Formulations: how the LPs of one layer are built, registered by name.

A formulation turns the neurons chosen in one layer into LP problems. It sees the layer through
a :class:`LayerLP` (numpy arrays and a function that records rows on demand), and returns
problems: typed, picklable dataclasses whose ``solve()`` returns an :class:`LPResult`. The
engine never branches on a formulation's name; adding one is a module with a problem class (or
a reuse of one) and a ``@register_formulation("name")`` class:

    @register_formulation("toy")
    class Toy(Formulation):
        def build(self, layer, owner):
            return NeuronProblem(...)     # or a new problem dataclass with solve()

``owners(indices)`` says how the neurons are grouped into LPs (one each by default; the margin
LP takes all chosen rows of the output layer in one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.registry import Registry
from qnnrepair.repair.lp.result import LPResult


class LPProblem(Protocol):
    """One LP: a picklable dataclass that solves itself (in whatever process runs it)."""

    def solve(self) -> LPResult: ...


class Rows(Protocol):
    """What a layer records for its LPs (qnnrepair.repair.activations.LayerRecord)."""

    inputs: np.ndarray  # (rows, fan_in * groups): dequantized input patch of each row
    float_out: np.ndarray  # (rows, out): the float model's pre-activations
    image: np.ndarray  # (rows,): the repair image each row came from

    def columns(self, channel: int) -> slice: ...


class Labels(Protocol):
    """Per repair image: the class to aim for, whether F gets it, whether it fails in Q."""

    label: np.ndarray
    usable: np.ndarray
    failing: np.ndarray


@dataclass
class LayerLP:
    """One layer of the candidate model, as the formulations see it.

    `weight` (out, fan_in) integers, `scale` (out,), `bias` (out,) real; `domain` the lowest
    and highest integer each weight may take (out, fan_in) each, when deltas are restricted
    (floor and ceiling of the float weight, see candidate.weight_domain), else None;
    `targets` gives per repair image `label` (the class to aim for), `usable` (whether the float
    model gets it) and `failing` (whether it fails after quantization), found when first read
    (candidate.Targets), here as `target`, `usable`, `failing`; `record(n_samples, max_images)`
    records about n_samples rows from at most max_images images (None: all) spread over the
    repair set (a forward pass, done once per argument pair); `n_rows` is the row budget of
    one LP at this layer.
    `options` holds the LP settings every problem takes (qmin, qmax, norm, integer,
    time_limit, and lam / kappa when set); `config` is the LPConfig; `memo` is scratch space
    for a formulation's per-layer work (e.g. the row summaries shared by its neurons).
    """

    name: str
    is_output: bool
    weight: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    domain: tuple[np.ndarray, np.ndarray] | None
    targets: Labels
    record: Callable[[int, int | None], Rows]
    n_rows: int
    options: dict[str, Any]
    config: Any
    seed: int
    memo: dict = field(default_factory=dict)

    @property
    def target(self) -> np.ndarray:
        return self.targets.label

    @property
    def usable(self) -> np.ndarray:
        return self.targets.usable

    @property
    def failing(self) -> np.ndarray:
        return self.targets.failing

    def delta_bounds(self, c: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Neuron c's allowed integers (`domain`) as deltas from its integers."""
        if self.domain is None:
            return None
        lowest, highest = self.domain
        return lowest[c] - self.weight[c], highest[c] - self.weight[c]

    def row_mask(self, rows: Rows) -> np.ndarray:
        """Rows an LP on raw rows keeps: failing images only if asked; at the output layer,
        only images the float model gets right (the others are no repair target)."""
        keep = self.failing[rows.image] if self.config.failing_only else \
            np.ones(len(rows.image), bool)
        return keep & self.usable[rows.image] if self.is_output else keep


class Formulation:
    """Builds the LPs of one layer. Subclasses set `output_only` if they need class labels,
    and `pass_rows` if `build` records only `record(config.summary_samples, None)`: such
    layers are recorded together, in one forward pass of the candidate."""

    name: ClassVar[str] = ""
    output_only: ClassVar[bool] = False
    pass_rows: ClassVar[bool] = False

    def owners(self, indices: Sequence[int]) -> list[tuple[int, ...]]:
        """The neurons of each LP: one LP per neuron unless a formulation says otherwise."""
        return [(c,) for c in indices]

    def build(self, layer: LayerLP, owner: tuple[int, ...]) -> LPProblem:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


FORMULATIONS = Registry("formulation")


def register_formulation(name: str) -> Callable[[type[Formulation]], type[Formulation]]:
    def decorator(cls: type[Formulation]) -> type[Formulation]:
        FORMULATIONS.register(name)(cls)
        cls.name = name
        return cls
    return decorator


def get_formulation(name: str, *, output: bool) -> Formulation:
    """The registered formulation `name`, checked to be usable at this kind of layer."""
    usable = formulation_names(output=output)
    if name not in usable:
        where = "the output layer" if output else "hidden layers"
        raise QnnRepairError(f"unknown formulation {name!r} for {where}: use one of "
                             f"{', '.join(usable)}")
    return FORMULATIONS[name]()


def formulation_names(*, output: bool) -> tuple[str, ...]:
    return tuple(n for n, cls in FORMULATIONS.items() if output or not cls.output_only)
