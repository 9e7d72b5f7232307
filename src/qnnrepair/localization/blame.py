"""Blame that sees the output: how much of the float-vs-quantized output divergence a neuron causes.

The divergence D(x) compares the quantized model's output Q(x) with the float model's F(x)
(default KL(softmax F(x) || softmax Q(x))); over a batch it is summed. A neuron n of layer L has
quantized output a_Q and float output a_F (pre-activations; a_F from the float model's own
forward pass, as in the spectrum). Its blame is the drop of D when, on the quantized model's
forward pass, a_Q is replaced by a_F (all positions of a conv channel), summed over the inputs:

    CounterfactualBlame   exact: one extra forward pass per neuron and batch;
    GradientBlame         first order: D(a_Q) - D(a_F) ~ g . (a_Q - a_F), g = dD/da_Q, all
                          layers from one backward pass per batch.

Positive blame: replacing the neuron by its float twin brings Q closer to F. Both need no labels
and no outcome (failing/passing): the float model's output is the reference, so every input
counts, weighted by how far Q's output is from F's on it.

The quantized layers round their inputs (torch.round, gradient 0). GradientBlame takes the
gradient through them straight-through: each quantized layer's output keeps its forward values
bit for bit, and its backward is that of W x', x' the input masked to the clamping range, so
dD/dx flows as if rounding were the identity inside the range and a flat clamp outside it (the
clipped straight-through estimator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.divergence import kl_divergence
from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.layers import DeployedLayer
from qnnrepair.hooks import rewrite_output
from qnnrepair.localization.forward import (
    LayerRecorder,
    check_layer_names,
    device_of,
    eval_mode,
    predictions,
    resolve_layers,
    unpacked,
)
from qnnrepair.localization.metrics import rank_neurons
from qnnrepair.localization.states import per_position
from qnnrepair.neurons import Neuron
from qnnrepair.progress import progress
from qnnrepair.quantization.modules import QUANT_LAYERS
from qnnrepair.registry import Registry

logger = logging.getLogger(__name__)

# Layers that round their input: our quantizer's and a deployed file's (TFLite, ONNX QDQ).
ROUNDING_LAYERS = QUANT_LAYERS + (DeployedLayer,)

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DIVERGENCES = Registry("divergence")


def register_divergence(name: str) -> Callable[[Divergence], Divergence]:
    """Decorator: `divergence(float_logits, quant_logits) -> (B,) tensor`, one value per input."""
    return DIVERGENCES.register(name)


register_divergence("kl")(kl_divergence)  # qnnrepair.divergence: one KL for every user


@register_divergence("logit_mse")
def logit_mse(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """0.5 ||F - Q||^2 per input, on the logits."""
    return 0.5 * ((quant_logits.double() - float_logits.double()) ** 2).sum(dim=1)


def get_divergence(name: str) -> Divergence:
    return DIVERGENCES.lookup(name)


class BlameLocalizer:
    """What the output-blame localizers share; they keep the Localizer contract
    (localization.base):

        localizer = GradientBlame().fit(float_model, quant_model, layers, batches)
        localizer.ranking_[:10]     # Neuron(layer, index), most to blame first

    `layers` are fully qualified names of Conv/Linear layers present in both models; `batches`
    yields (images, labels) (labels are only checked, blame does not use them). Learned by fit:
    scores_ ({layer: float64 array, one blame per output neuron / channel}), ranking_
    (list[Neuron], highest blame first, ties by layer order then index), n_inputs_ and
    divergence_ (D of the quantized model summed over the inputs, before any replacement).
    """

    def __init__(self, divergence: str = "kl") -> None:
        self.divergence = divergence
        get_divergence(divergence)  # fail at construction

    def _prepare(self, float_model, quant_model, layers):
        return _named_layers(float_model, quant_model, layers)

    def _finish(self, scores: dict[str, torch.Tensor], layers: list[str], n_inputs: int,
                total: float):
        if n_inputs == 0:
            raise QnnRepairError("no batches were given; pass at least one batch of repair inputs")
        self.scores_: dict[str, np.ndarray] = {k: scores[k].cpu().numpy() for k in layers}
        self.ranking_: list[Neuron] = rank_neurons(self.scores_, layers)
        self.n_inputs_: int = n_inputs
        self.divergence_: float = total
        logger.debug("%r: %d inputs, D = %.6g", self, n_inputs, total)
        return self


def _named_layers(float_model, quant_model, layers):
    """The checked layer names and their modules in the float and the quantized model."""
    layers = check_layer_names(layers)
    float_modules = resolve_layers(float_model, layers, "float model")
    quant_modules = resolve_layers(quant_model, layers, "quantized model")
    return layers, float_modules, quant_modules


def _enter_models(stack: ExitStack, float_model, quant_model, float_modules):
    """Both models in eval mode (flags restored on exit) and the float model's recorder."""
    stack.enter_context(eval_mode(float_model))
    stack.enter_context(eval_mode(quant_model))
    return stack.enter_context(LayerRecorder(float_model, float_modules, "float model"))


def _divergence(name: str, float_logits: Any, quant_logits: Any, batch_size: int) -> torch.Tensor:
    predictions(float_logits, batch_size, "float model")  # shape checks, one-line errors
    predictions(quant_logits, batch_size, "quantized model")
    return get_divergence(name)(float_logits, quant_logits)


class GradientBlame(BlameLocalizer):
    """First-order blame: per neuron, the sum over inputs (and positions) of g * (a_Q - a_F),
    g = dD/da_Q through the quantized model (straight-through across its rounding, see the
    module docstring). One forward of each model and one backward per batch, all layers at once.

    divergence: a name in DIVERGENCES; absolute: sum |g . (a_Q - a_F)| per input instead of the
    signed value (the magnitude of a neuron's influence, whatever its direction).
    """

    def __init__(self, divergence: str = "kl", absolute: bool = False) -> None:
        super().__init__(divergence)
        self.absolute = absolute

    def fit(self, float_model: nn.Module, quant_model: nn.Module, layers: Sequence[str],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            show_progress: bool = False) -> GradientBlame:
        layers, float_modules, quant_modules = self._prepare(float_model, quant_model, layers)
        device = device_of(float_model)
        scores: dict[str, torch.Tensor] = {}
        n_inputs, total = 0, 0.0
        with ExitStack() as stack:
            float_run = _enter_models(stack, float_model, quant_model, float_modules)
            quant_run = stack.enter_context(_StraightThrough(quant_model, quant_modules))
            for images, labels in unpacked(
                    progress(batches, show_progress, desc="gradient blame"), device):
                with torch.no_grad():
                    float_logits, float_acts = float_run(images)
                with torch.enable_grad():
                    quant_logits, quant_acts = quant_run(images)
                    d = _divergence(self.divergence, float_logits, quant_logits, len(labels))
                    outputs = [quant_acts[layer] for layer in layers]
                    grads = torch.autograd.grad(d.sum(), outputs, allow_unused=True)
                for layer, a_q, g in zip(layers, outputs, grads):
                    if g is None:  # the layer does not reach the output
                        g = torch.zeros_like(a_q)
                    delta = per_position(a_q.detach().double() - float_acts[layer].double())
                    per_input = (per_position(g.double()) * delta).sum(-1)  # (B, C)
                    blame = (per_input.abs() if self.absolute else per_input).sum(0)
                    scores[layer] = blame if layer not in scores else scores[layer] + blame
                n_inputs += len(labels)
                total += float(d.detach().sum())
        return self._finish(scores, layers, n_inputs, total)

    def __repr__(self) -> str:
        return f"GradientBlame(divergence={self.divergence!r}, absolute={self.absolute!r})"


class CounterfactualBlame(BlameLocalizer):
    """Exact blame: per neuron, the drop of D when that neuron's quantized output (all positions)
    is replaced by its float output on the quantized model's forward pass, summed over the
    inputs. The reference GradientBlame is checked against.

    COSTLY: one extra forward pass of the quantized model per neuron and per batch (ResNet-20's
    688 hidden channels: 688 forward passes per batch). Meant for small nets and for measuring;
    to restrict it, pass fewer `layers` to fit.
    """

    def fit(self, float_model: nn.Module, quant_model: nn.Module, layers: Sequence[str],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            show_progress: bool = False) -> CounterfactualBlame:
        layers, float_modules, quant_modules = self._prepare(float_model, quant_model, layers)
        device = device_of(float_model)
        scores: dict[str, torch.Tensor] = {}
        n_inputs, total = 0, 0.0
        with ExitStack() as stack, torch.no_grad():
            float_run = _enter_models(stack, float_model, quant_model, float_modules)
            replace = stack.enter_context(_Replacement(quant_modules))
            for images, labels in unpacked(
                    progress(batches, show_progress, desc="counterfactual blame"), device):
                float_logits, float_acts = float_run(images)
                base = _divergence(self.divergence, float_logits, quant_model(images),
                                   len(labels)).sum()
                for layer in layers:
                    n_neurons = float_acts[layer].shape[1]
                    drops = torch.zeros(n_neurons, dtype=torch.float64)
                    for index in range(n_neurons):
                        with replace(layer, index, float_acts[layer]):
                            d = _divergence(self.divergence, float_logits, quant_model(images),
                                            len(labels)).sum()
                        drops[index] = base - d
                    scores[layer] = drops if layer not in scores else scores[layer] + drops
                n_inputs += len(labels)
                total += float(base)
        return self._finish(scores, layers, n_inputs, total)

    def __repr__(self) -> str:
        return f"CounterfactualBlame(divergence={self.divergence!r})"


def weight_gradients(float_model: nn.Module, quant_model: nn.Module, layers: Sequence[str],
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     divergence: str = "kl") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """dD/dW and dD/db of each named quantized layer, in real units and the shapes of its
    dequantized weight and bias, summed over the inputs; D and the straight-through gradient as
    in GradientBlame. The first-order change of D when the layer's weights and bias move by
    (dW, db) is sum(gW * dW) + sum(gb * db): what a repair's change is predicted to do to D at
    the model the gradient was taken on. A research helper (benchmarks/experiments/
    e2_interactions.py), exported by qnnrepair.experimental, not by the localization package."""
    layers, _, quant_modules = _named_layers(float_model, quant_model, layers)
    device = device_of(float_model)
    sums: dict[str, list[torch.Tensor]] = {}
    inputs: dict[str, torch.Tensor] = {}  # each layer's input as its kernel sees it
    module_names = {id(module): layer for layer, module in quant_modules.items()}

    def keep_input(module: nn.Module, args: tuple, _output: Any) -> None:
        inputs[module_names[id(module)]] = module.quantize_input(args[0]).detach()

    with ExitStack() as stack:  # only the float logits are needed: no float recorder
        stack.enter_context(eval_mode(float_model))
        stack.enter_context(eval_mode(quant_model))
        quant_run = stack.enter_context(_StraightThrough(quant_model, quant_modules))
        for module in quant_modules.values():
            stack.callback(module.register_forward_hook(keep_input).remove)
        for images, labels in unpacked(batches, device):
            with torch.no_grad():
                float_logits = float_model(images)
            with torch.enable_grad():
                quant_logits, outputs = quant_run(images)
                d = _divergence(divergence, float_logits, quant_logits, len(labels))
                grads = torch.autograd.grad(d.sum(), [outputs[k] for k in layers],
                                            allow_unused=True)
            for layer, g in zip(layers, grads):
                module = quant_modules[layer]
                if g is None:  # the layer does not reach the output
                    g = torch.zeros_like(outputs[layer])
                parts = _parameter_gradients(module, inputs[layer], g)
                sums[layer] = parts if layer not in sums else \
                    [a + b for a, b in zip(sums[layer], parts)]
    return {layer: (gw.numpy(), gb.numpy()) for layer, (gw, gb) in sums.items()}


def _parameter_gradients(module: nn.Module, x: torch.Tensor,
                         grad: torch.Tensor) -> list[torch.Tensor]:
    """(dD/dW, dD/db) of one layer from its quantized input x and dD/d(output), in float64."""
    weight = module.dequantized_weight().detach()
    grad = grad.to(weight.dtype)
    if weight.dim() != 4:
        grad_w = grad.T @ x.to(weight.dtype)
    else:  # autograd of the layer's own convolution: any stride, groups or padding
        with torch.enable_grad():
            w = weight.clone().requires_grad_(True)
            out = F.conv2d(x.to(weight.dtype), w, None, module.stride, module.padding,
                           module.dilation, module.groups)
            grad_w = torch.autograd.grad(out, w, grad)[0]
    grad_b = grad.sum(dim=[i for i in range(grad.dim()) if i != 1])
    return [grad_w.double(), grad_b.double()]


# --- hooks -------------------------------------------------------------------------------------


class _StraightThrough:
    """Forward hooks on every quantized layer of `model` (whether named or not: one rounding
    left in the path would zero the gradient of every layer before it) that keep the output
    values and give them a straight-through gradient; calling it runs the model with autograd
    and returns (logits, {named layer: output in the graph})."""

    def __init__(self, model: nn.Module, named: Mapping[str, nn.Module]) -> None:
        self.model = model
        self.names = {id(module): layer for layer, module in named.items()}
        self.modules = [m for m in model.modules() if isinstance(m, ROUNDING_LAYERS)]
        self.modules += [m for m in named.values() if not isinstance(m, ROUNDING_LAYERS)]
        self._stack = ExitStack()
        self._outputs: dict[str, torch.Tensor] | None = None

    def __enter__(self) -> _StraightThrough:
        modules = {str(i): module for i, module in enumerate(self.modules)}
        self._stack.enter_context(rewrite_output(modules, self._hook))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        self._outputs = None

    def _hook(self, _name: str, module: nn.Module, inputs: Any, output: Any) -> Any:
        if self._outputs is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise QnnRepairError(f"layer {type(module).__name__} returned "
                                 f"{type(output).__name__}, not a tensor; choose Conv/Linear "
                                 "layers")
        x = inputs[0]
        if isinstance(module, ROUNDING_LAYERS) and x.requires_grad:
            output = _ClippedStraightThrough.apply(output.detach(), x, module)
        layer = self.names.get(id(module))
        if layer is not None:
            if layer in self._outputs:
                raise QnnRepairError(f"layer {layer!r} of the quantized model ran twice in one "
                                     "forward pass; choose modules that run once")
            if not output.requires_grad:  # the first layer: nothing upstream needs a gradient
                output = output.detach().requires_grad_(True)
            self._outputs[layer] = output
            # The model goes on with a copy: an in-place op downstream (nn.ReLU(inplace=True),
            # `out += x`) would otherwise write into the tensor the gradient is taken at.
            return output.clone()
        return output

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._outputs = {}
        try:
            logits = self.model(images)
            outputs = self._outputs
        finally:
            self._outputs = None
        missing = [layer for layer in self.names.values() if layer not in outputs]
        if missing:
            raise QnnRepairError(
                f"layers {missing} of the quantized model did not run in its forward pass")
        return logits, outputs


class _ClippedStraightThrough(torch.autograd.Function):
    """A quantized layer's output, unchanged in value; in gradient, the gradient of W x_in,
    x_in being the input where the layer's input quantizer does not clamp (there rounding
    moves it by at most half a step) and 0 where it does. The backward computes that gradient
    directly, so the forward pass runs no second convolution."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        step = module.input_scale
        inside = (module.quantize_input(x) - x).abs() <= 0.5 * step * (1 + 1e-4) + 1e-12
        ctx.save_for_backward(inside)
        ctx.module, ctx.x_shape = module, x.shape
        return output.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,), module = ctx.saved_tensors, ctx.module
        weight = module.dequantized_weight()
        # A deployed layer computes in float64; W x_in is in the weight's precision.
        grad_x = _input_gradient(module, weight, grad.to(weight.dtype), ctx.x_shape)
        return None, grad_x * inside, None


def _input_gradient(module: nn.Module, weight: torch.Tensor, grad: torch.Tensor,
                    x_shape: torch.Size) -> torch.Tensor:
    """d(W x)/dx applied to `grad`: the transposed convolution, or grad W for a linear layer."""
    if weight.dim() != 4:
        return grad.matmul(weight)
    if isinstance(module.padding, str):  # "same" / "valid": autograd knows how conv2d padded
        with torch.enable_grad():
            x = torch.zeros(x_shape, dtype=weight.dtype, requires_grad=True)
            out = F.conv2d(x, weight, None, module.stride, module.padding, module.dilation,
                           module.groups)
            return torch.autograd.grad(out, x, grad)[0]
    return torch.nn.grad.conv2d_input(x_shape, weight, grad, module.stride, module.padding,
                                      module.dilation, module.groups)


class _Replacement:
    """One forward hook per named layer; `with replace(layer, index, a_float):` makes that
    layer's output channel `index` equal to a_float's for the forward passes inside."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self._stack = ExitStack()
        self._active: tuple[str, int, torch.Tensor] | None = None

    def __enter__(self) -> _Replacement:
        self._stack.enter_context(rewrite_output(self.modules, self._hook))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
        self._active = None

    def _hook(self, layer: str, module: nn.Module, inputs: Any, output: Any) -> Any:
        if self._active is None or self._active[0] != layer:
            return None
        _, index, a_float = self._active
        if output.shape != a_float.shape:
            raise QnnRepairError(
                f"layer {layer!r}: quantized output {tuple(output.shape)} and float output "
                f"{tuple(a_float.shape)} differ; the two models must have the same "
                "architecture")
        output = output.clone()
        output[:, index] = a_float[:, index]
        return output

    def __call__(self, layer: str, index: int, a_float: torch.Tensor) -> ExitStack:
        stack = ExitStack()
        self._active = (layer, index, a_float)
        stack.callback(setattr, self, "_active", None)
        return stack
