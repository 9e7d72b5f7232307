"""Neuron-state rules: does a quantized neuron deviate from its float twin on an input?

A rule sees the float and quantized pre-activations of one layer on one batch, `a_float` and
`a_quant` of shape (B, C) for Linear or (B, C, H, W) for conv (any (B, C, *positions) works), and
returns a bool tensor (B, C): True where neuron c deviates on input b. A deviating neuron is
"covered" in spectrum terms. Graded rules (`graded = True`) return a float tensor (B, C) of
degrees in [0, 1] instead; the counts are then sums of degrees (GradedSpectrumCounts).

Rules that compare against the natural spread of a neuron (`needs_float_stats = True`) receive
that neuron's `FloatStats`: mean and std of the float pre-activation over all repair inputs and
all positions, gathered by the recorder in a first streaming pass with `RunningMoments`. Other
rules receive None. Rules are stateless frozen dataclasses whose fields are their parameters, so
one instance serves every layer and its repr says exactly what was used. New rules subclass
`StateRule` and register with `@register_state_rule("name")`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.registry import Registry

STATE_RULES = Registry("state rule", "rules")

# A neuron whose float pre-activation never varies (e.g. a pruned channel: std 0) would deviate on
# every input at the first rounding difference. Its std is floored at this fraction of the mean
# std of its layer, so "relative" stays relative to a meaningful scale.
STD_FLOOR_FRACTION = 1e-3


@dataclass(frozen=True)
class FloatStats:
    """Per-neuron statistics of a layer's float pre-activation: `count` values per neuron
    (inputs x positions), `mean` and population `std`, float64 tensors of shape (C,)."""

    count: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def n_neurons(self) -> int:
        return int(self.mean.shape[0])


class RunningMoments:
    """Streaming per-channel mean and variance of (B, C, *positions) batches, in float64.

    Batches are merged with the parallel update of Chan, Golub and LeVeque, which stays accurate
    where summing x and x^2 would cancel catastrophically.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, activations: torch.Tensor) -> None:
        values = per_position(activations).double()  # (B, C, P)
        channels = values.shape[1]
        values = values.transpose(0, 1).reshape(channels, -1)  # (C, B * P)
        n_batch = values.shape[1]
        if n_batch == 0:
            return
        mean_batch = values.mean(dim=1)
        m2_batch = ((values - mean_batch[:, None]) ** 2).sum(dim=1)
        if self._mean is None or self._m2 is None:
            self.count, self._mean, self._m2 = n_batch, mean_batch, m2_batch
            return
        if channels != self._mean.shape[0]:
            raise QnnRepairError(
                f"a layer output had {channels} channels after {self._mean.shape[0]} before"
            )
        total = self.count + n_batch
        delta = mean_batch - self._mean
        self._mean = self._mean + delta * (n_batch / total)
        self._m2 = self._m2 + m2_batch + delta**2 * (self.count * n_batch / total)
        self.count = total

    def result(self) -> FloatStats:
        if self._mean is None or self._m2 is None:
            raise QnnRepairError("no activations were seen; give at least one batch")
        return FloatStats(self.count, self._mean.clone(), (self._m2 / self.count).sqrt())

    def __repr__(self) -> str:
        channels = None if self._mean is None else self._mean.shape[0]
        return f"RunningMoments(count={self.count}, n_neurons={channels})"


def per_position(activations: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1); (B, C, *positions) -> (B, C, P)."""
    if activations.dim() < 2:
        raise QnnRepairError(
            f"a layer output must be (batch, channels, ...), got shape {tuple(activations.shape)}"
        )
    return activations.reshape(activations.shape[0], activations.shape[1], -1)


class StateRule:
    """Base class of the neuron-state rules (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    needs_float_stats: ClassVar[bool] = False
    graded: ClassVar[bool] = False

    def deviates(
        self, a_float: torch.Tensor, a_quant: torch.Tensor, stats: FloatStats | None
    ) -> torch.Tensor:
        """Bool tensor (B, C): True where neuron c of the quantized layer deviates on input b
        (graded rules: degrees in [0, 1], float)."""
        raise NotImplementedError


def register_state_rule(name: str):
    """Class decorator: make a StateRule subclass available under `name`."""
    def decorator(cls: type[StateRule]) -> type[StateRule]:
        STATE_RULES.register(name)(cls)
        cls.name = name
        return cls
    return decorator


def get_state_rule(rule: str | StateRule, **params: Any) -> StateRule:
    """A StateRule instance from its registered name and parameters (or the instance itself)."""
    if isinstance(rule, StateRule):
        if params:
            raise QnnRepairError(
                "give parameters either to the StateRule instance or here, not both"
            )
        return rule
    cls = STATE_RULES.lookup(rule)
    try:
        return cls(**params)
    except TypeError as error:
        raise QnnRepairError(f"state rule {rule!r}: {error}") from None


def _check_same_shape(a_float: torch.Tensor, a_quant: torch.Tensor) -> None:
    if a_float.shape != a_quant.shape:
        raise QnnRepairError(
            f"float and quantized layer outputs differ in shape: {tuple(a_float.shape)} vs "
            f"{tuple(a_quant.shape)}; the two models must have the same architecture"
        )


def _check_fraction(name: str, value: float, upper_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value:
        raise QnnRepairError(f"{name} must be a non-negative number, got {value!r}")
    if upper_open and not value < 1:
        raise QnnRepairError(f"{name} must be in [0, 1), got {value!r}")
    if not math.isfinite(value):
        raise QnnRepairError(f"{name} must be finite, got {value!r}")


@register_state_rule("relative_error")
@dataclass(frozen=True)
class RelativeError(StateRule):
    """Deviates when mean over positions |a_Q - a_F| > tau * std_F(neuron).

    tau = 0.1: rounding a weight to a b-bit per-channel grid adds noise of roughly
    max|w| / ((2^(b-1) - 1) * sqrt(12) * rms(w)) times the pre-activation's spread, i.e. about
    1% of std_F at 8 bits, 10-15% at 4 bits, 30% at 3 bits (Gaussian-like weights, max/rms ~ 3.5).
    A tenth of the float spread therefore flags only outlier inputs at 8 bits and splits inputs
    into deviating / not deviating at the 4-bit widths where accuracy is actually lost, which is
    what a spectrum needs: a state that varies across inputs.
    """

    tau: float = 0.1
    needs_float_stats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fraction("tau", self.tau, upper_open=False)

    def deviates(self, a_float, a_quant, stats):
        error, std = _error_and_std(a_float, a_quant, stats)
        return error > self.tau * std


def _error_and_std(
    a_float: torch.Tensor, a_quant: torch.Tensor, stats: FloatStats | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over positions |a_Q - a_F| (B, C) and the neuron's floored float std (C,), float64."""
    _check_same_shape(a_float, a_quant)
    if stats is None:
        raise QnnRepairError("this state rule needs the float statistics of the layer")
    if stats.n_neurons != a_float.shape[1]:
        raise QnnRepairError(
            f"float statistics cover {stats.n_neurons} neurons, the layer has {a_float.shape[1]}"
        )
    error = (per_position(a_quant).double() - per_position(a_float).double()).abs().mean(-1)
    std = stats.std.to(error.device)
    floor = max(STD_FLOOR_FRACTION * float(std.mean()), torch.finfo(torch.float32).tiny)
    return error, std.clamp(min=floor)


@register_state_rule("activation_flip")
@dataclass(frozen=True)
class ActivationFlip(StateRule):
    """Deviates when the ReLU on/off state (a > 0) differs at more than a fraction rho of the
    positions; for Linear (one position) simply when the state differs. For a layer not followed
    by a ReLU this is a sign flip.

    rho = 0.05: an on/off flip needs |a_F| below the quantization error, so 8-bit rounding flips
    well under 1% of a channel's positions and 4-bit rounding a few percent (error about a tenth
    of the spread, see RelativeError). One position in twenty marks inputs on which the channel's
    activation pattern really changes, not rounding jitter at the zero crossing.
    """

    rho: float = 0.05

    def __post_init__(self) -> None:
        _check_fraction("rho", self.rho, upper_open=True)

    def deviates(self, a_float, a_quant, stats=None):
        _check_same_shape(a_float, a_quant)
        flips = (per_position(a_float) > 0) != (per_position(a_quant) > 0)
        n_positions = flips.shape[-1]
        return flips.sum(-1) > self.rho * n_positions


@register_state_rule("either")
@dataclass(frozen=True)
class FlipOrRelativeError(StateRule):
    """The default: deviates when ActivationFlip(rho) or RelativeError(tau) says so."""

    tau: float = 0.1
    rho: float = 0.05
    needs_float_stats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fraction("tau", self.tau, upper_open=False)
        _check_fraction("rho", self.rho, upper_open=True)

    def deviates(self, a_float, a_quant, stats):
        flip = ActivationFlip(self.rho).deviates(a_float, a_quant)
        return flip | RelativeError(self.tau).deviates(a_float, a_quant, stats)


@register_state_rule("graded_error")
@dataclass(frozen=True)
class GradedError(StateRule):
    """Graded: deviates by min(1, mean over positions |a_Q - a_F| / (saturation * std_F)).

    The binary rules saturate at 3-4 bits (E2: nearly every neuron deviates on nearly every
    input, so the counts tie); a degree keeps the difference between a neuron that is off by a
    tenth of its spread and one that is off by its whole spread. saturation = 1.0: a neuron off
    by one float std on an input is as deviating as it gets there (3-bit rounding errors are
    about 0.3 std, see RelativeError, so typical degrees stay well inside (0, 1)).
    """

    saturation: float = 1.0
    needs_float_stats: ClassVar[bool] = True
    graded: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_fraction("saturation", self.saturation, upper_open=False)
        if self.saturation == 0:
            raise QnnRepairError("saturation must be positive, got 0")

    def deviates(self, a_float, a_quant, stats):
        error, std = _error_and_std(a_float, a_quant, stats)
        return (error / (self.saturation * std)).clamp(max=1.0)
