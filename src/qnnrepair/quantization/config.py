"""Quantization settings: one frozen dataclass, validated when built, serialized into every file."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

from qnnrepair.errors import QnnRepairError

WEIGHT_CLIPPINGS = ("maxabs", "mse")
ACT_CALIBRATIONS = ("minmax", "percentile", "mse")
_SETTING = re.compile(r"^w(\d+)a(\d+)(-pt)?$")  # "-pt": one weight scale per tensor


@dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer, given by its fully qualified module name."""

    layer: str
    weight_bits: int
    act_bits: int


@dataclass(frozen=True)
class QuantConfig:
    """How a float network becomes an integer one (docs/DESIGN.md, section 2).

    Weights are symmetric on [-(2^(b-1)-1), 2^(b-1)-1] with a scale per output channel (or per
    tensor); the input of every Conv/Linear is asymmetric unsigned, per tensor, calibrated on a
    calibration set. `first_last_bits` keeps the first and last quantized layer at that width
    (common deployment practice; None disables it). `overrides` win over everything else.
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    weight_clipping: str = "maxabs"
    act_calibration: str = "minmax"
    percentile: float = 99.99
    first_last_bits: int | None = 8
    overrides: tuple[LayerBits, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            _check_bits(name, getattr(self, name))
        if self.first_last_bits is not None:
            _check_bits("first_last_bits", self.first_last_bits)
        if self.weight_clipping not in WEIGHT_CLIPPINGS:
            raise QnnRepairError(
                f"unknown weight clipping {self.weight_clipping!r}: use one of {WEIGHT_CLIPPINGS}"
            )
        if self.act_calibration not in ACT_CALIBRATIONS:
            raise QnnRepairError(
                f"unknown activation calibration {self.act_calibration!r}: "
                f"use one of {ACT_CALIBRATIONS}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise QnnRepairError(f"percentile must be in (50, 100], got {self.percentile}")
        overrides = tuple(o if isinstance(o, LayerBits) else LayerBits(**o) for o in self.overrides)
        for o in overrides:
            _check_bits(f"override for {o.layer} weight_bits", o.weight_bits)
            _check_bits(f"override for {o.layer} act_bits", o.act_bits)
        object.__setattr__(self, "overrides", overrides)

    @classmethod
    def from_setting(cls, setting: str, **kwargs) -> QuantConfig:
        """`QuantConfig.from_setting("w4a8", per_channel=False)`; "w8a8-pt" is w8a8 with one
        weight scale per tensor."""
        match = _SETTING.match(setting.strip().lower())
        if not match:
            raise QnnRepairError(
                f"unknown quantization setting {setting!r}: write it as wXaY, e.g. w8a8 or w4a8 "
                "(wXaY-pt: per-tensor weights)"
            )
        if match[3]:
            kwargs = {**kwargs, "per_channel": False}
        return cls(weight_bits=int(match[1]), act_bits=int(match[2]), **kwargs)

    @property
    def setting(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}"

    def bits_for(self, layer: str, position: int, n_layers: int) -> tuple[int, int]:
        """(weight_bits, act_bits) of the layer at `position` in forward order."""
        for o in self.overrides:
            if o.layer == layer:
                return o.weight_bits, o.act_bits
        if self.first_last_bits is not None and position in (0, n_layers - 1):
            return self.first_last_bits, self.first_last_bits
        return self.weight_bits, self.act_bits

    def with_overrides(self, overrides: dict[str, tuple[int, int]]) -> QuantConfig:
        extra = tuple(LayerBits(k, w, a) for k, (w, a) in overrides.items())
        return replace(self, overrides=self.overrides + extra)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        data = dict(data)
        data["overrides"] = tuple(LayerBits(**o) for o in data.get("overrides", ()))
        return cls(**data)


def _check_bits(name: str, bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QnnRepairError(f"{name} must be an integer from 2 to 8, got {bits!r}")
