"""A deployed integer model beside its float reference, whatever file it came from."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class FileOrigin:
    """Where a deployed model's quantization comes from: its file. It stands where a
    QuantConfig stands for a model qnnrepair quantized itself (the report's quant_config,
    `setting`)."""

    format: str
    path: str
    float_path: str | None = None

    @property
    def setting(self) -> str:
        return f"{self.format} file"

    def to_dict(self) -> dict:
        return {"format": self.format, "file": self.path, "float_file": self.float_path}


@dataclass(repr=False)
class DeployedModel:
    """The simulation of a deployed file beside its float reference, in the shape of
    qnnrepair.quantization.QuantizedModel (model, float_model, layers, layer(), float_layer(),
    copy(), integer_state()). `model` and `float_model` share the fully qualified names of the
    quantized layers in `layers` (forward order); `path` is the deployed file, which the
    format's writer copies. Each format adds its own fields after these."""

    model: nn.Module
    float_model: nn.Module
    layers: list[str]
    path: str

    format_name: ClassVar[str] = ""
    # Gradients run through the observed path, which computes in float64 and keeps each op's
    # intermediates: twice a QuantizedModel's bytes per activation (see engine._fit_localizer)
    gradient_bytes: ClassVar[int] = 8

    @property
    def config(self) -> FileOrigin:
        return FileOrigin(self.format_name, self.path, getattr(self, "float_path", None))

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def float_layer(self, name: str) -> nn.Module:
        return self.float_model.get_submodule(name)

    def copy(self) -> DeployedModel:
        """A copy whose integers can be changed without touching this one (float model shared)."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model),
                                   layers=list(self.layers))

    def integer_state(self) -> dict[str, torch.Tensor]:
        """The integers of every quantized layer: what a repair changes."""
        return {f"{n}.{k}": getattr(self.layer(n), k).clone()
                for n in self.layers for k in ("weight_int", "bias_int")}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({Path(self.path).name!r}, {len(self.layers)} quantized "
                "layers)")
