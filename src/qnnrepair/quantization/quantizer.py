"""The quantize verb: float nn.Module + QuantConfig + calibration images -> QuantizedModel."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import batch_size_for
from qnnrepair.hooks import on_forward
from qnnrepair.progress import progress
from qnnrepair.quantization.checks import check_output, run_once, self_check
from qnnrepair.quantization.config import QuantConfig
from qnnrepair.quantization.fold import fold_batchnorm, set_module
from qnnrepair.quantization.kernels import own_kernels, weighted_calls_outside
from qnnrepair.quantization.modules import QUANT_LAYERS, quant_layer_like
from qnnrepair.quantization.primitives import (
    activation_qparams,
    calibrate_range,
    quantize_symmetric,
    weight_scale,
)

logger = logging.getLogger(__name__)

# Values kept per layer for percentile/MSE calibration: enough for a 99.99th percentile to be
# meaningful, small enough that calibration memory does not grow with the calibration set.
_SAMPLE_PER_BATCH = 8192
_SAMPLE_CAP = 1 << 20


@dataclass
class QuantizedModel:
    """A quantized network beside the BN-folded float network it came from.

    Modules with a forward of their own are wrapped (`kernels`, see quantization.kernels), so a
    layer name may end in `.kernel`. `model` and `float_model` share the fully qualified names
    of every quantized layer in `layers` (forward order), so hooks on the same name see the
    float and quantized pre-activations of the same neurons.
    """

    model: nn.Module
    float_model: nn.Module
    config: QuantConfig
    layers: list[str]
    folded: list[tuple[str, str]] = field(default_factory=list)
    model_spec: str | None = None
    num_classes: int | None = None
    kernels: dict[str, dict] = field(default_factory=dict)  # modules with their own forward

    gradient_bytes: ClassVar[int] = 4  # per activation on the backward pass (float32)

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def float_layer(self, name: str) -> nn.Module:
        return self.float_model.get_submodule(name)

    def copy(self) -> QuantizedModel:
        """A copy whose integers can be changed without touching this one (float model shared)."""
        return QuantizedModel(copy.deepcopy(self.model), self.float_model, self.config,
                              list(self.layers), list(self.folded), self.model_spec,
                              self.num_classes, dict(self.kernels))

    def integer_state(self) -> dict[str, torch.Tensor]:
        """The integers of every quantized layer: what a repair changes."""
        return {f"{n}.{k}": getattr(self.layer(n), k).clone()
                for n in self.layers for k in ("weight_int", "bias_int")}

    def __repr__(self) -> str:
        return (f"QuantizedModel({self.model_spec or type(self.model).__name__}, "
                f"{self.config.setting}, {len(self.layers)} layers)")


def batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def layer_calls(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear layers as one forward pass calls them, repeats included."""
    calls: list[str] = []
    weighted = {name: m for name, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))}
    with on_forward(weighted, lambda name, _x: calls.append(name), "input"), torch.no_grad():
        model(example_input)
    return calls



class _RangeObserver:
    """Streaming min/max plus a bounded random sample of one layer's input values."""

    def __init__(self, generator: torch.Generator) -> None:
        self.lo, self.hi = float("inf"), float("-inf")
        self.samples: list[torch.Tensor] = []
        self.n_kept = 0
        self.generator = generator

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1)
        self.lo, self.hi = min(self.lo, x.min().item()), max(self.hi, x.max().item())
        if self.n_kept < _SAMPLE_CAP:
            k = min(_SAMPLE_PER_BATCH, x.numel())
            idx = torch.randint(x.numel(), (k,), generator=self.generator)
            self.samples.append(x[idx].clone())
            self.n_kept += k

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.empty(0)


def calibrate(model: nn.Module, layers: list[str], images: torch.Tensor, batch_size: int,
              seed: int, show_progress: bool) -> dict[str, _RangeObserver]:
    generator = torch.Generator().manual_seed(seed)
    observers = {name: _RangeObserver(generator) for name in layers}
    modules = {name: model.get_submodule(name) for name in layers}
    with on_forward(modules, lambda name, x: observers[name].update(x), "input"), torch.no_grad():
        for batch in progress(batches(images, batch_size), show_progress,
                              total=-(-len(images) // batch_size), desc="calibrate"):
            model(batch)
    return observers


def quantize(model: nn.Module, config: QuantConfig, calibration_images: torch.Tensor, *,
             model_spec: str | None = None, batch_size: int | None = None, seed: int = 0,
             show_progress: bool = False) -> QuantizedModel:
    """Fold BatchNorm, calibrate activation ranges and quantize every Conv2d/Linear.

    `calibration_images` are normalized float NCHW tensors. The input model is not changed.
    """
    if len(calibration_images) == 0:
        raise QnnRepairError("calibration set is empty: give at least one image")
    example = calibration_images[:2]
    model = copy.deepcopy(model).eval()  # the user's model keeps its flags and statistics
    check_output(model, example)
    own_model, kernels = own_kernels(model, example)
    weighted_calls_outside(own_model, example)
    float_model, folded = fold_batchnorm(own_model, example)
    calls = layer_calls(float_model, example)
    layers = list(dict.fromkeys(calls))
    if not layers:
        raise QnnRepairError("model has no Conv2d or Linear layer to quantize: qnnrepair "
                             "changes the integer weights of those layers")
    run_once(float_model, calls)
    batch_size = batch_size or batch_size_for(calibration_images, 250)
    observers = calibrate(float_model, layers, calibration_images, batch_size, seed, show_progress)
    quant_model = copy.deepcopy(float_model)
    for position, name in enumerate(layers):
        wbits, abits = config.bits_for(name, position, len(layers))
        layer = _quantize_layer(float_model.get_submodule(name), observers[name], config,
                                wbits, abits)
        set_module(quant_model, name, layer)
    self_check(model, quant_model.eval(), float_model.eval(), layers, calibration_images)
    logger.info("quantized %d layers at %s (%d BatchNorms folded)", len(layers), config.setting,
                len(folded))
    num_classes = _num_classes(float_model, layers)
    return QuantizedModel(quant_model, float_model, config, layers, folded, model_spec,
                          num_classes, kernels)


def _quantize_layer(float_layer: nn.Module, observer: _RangeObserver, config: QuantConfig,
                    wbits: int, abits: int) -> nn.Module:
    lo, hi = calibrate_range(observer.sample(), observer.lo, observer.hi, abits,
                             config.act_calibration, config.percentile)
    input_scale, zero_point = activation_qparams(lo, hi, abits)
    w = float_layer.weight.detach()
    scale = weight_scale(w, wbits, config.per_channel, config.weight_clipping)
    layer = quant_layer_like(float_layer, wbits, abits)
    bias = float_layer.bias.detach() if float_layer.bias is not None else None
    layer.set_weights(w, scale, bias, input_scale, zero_point, quantize_symmetric(w, scale, wbits))
    return layer


def _num_classes(model: nn.Module, layers: list[str]) -> int | None:
    last = model.get_submodule(layers[-1])
    return last.out_features if isinstance(last, nn.Linear) else None


def is_quant_layer(module: nn.Module) -> bool:
    return isinstance(module, QUANT_LAYERS)
