"""Running the float and the quantized model side by side, the way every localizer does:
batches checked and unpacked, layers resolved by name, eval mode with flags restored, and a
recorder of named layers' outputs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, final

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.hooks import on_forward


@final
class LayerRecorder:
    """Forward hooks on named modules of one model; calling it runs the model once and returns
    (logits, {layer: output}). Hooks only record during that call, so two recorders can share
    modules (the same model passed twice) without seeing each other's forward passes."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module], role: str) -> None:
        self.model = model
        self.modules = dict(modules)
        self.role = role
        self._hooks = ExitStack()
        self._outputs: dict[str, torch.Tensor] = {}
        self._recording = False

    def __enter__(self) -> LayerRecorder:
        self._hooks.enter_context(on_forward(self.modules, self._record, "output"))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hooks.close()
        self._outputs = {}

    def _record(self, layer: str, output: Any) -> None:
        if not self._recording:
            return
        if layer in self._outputs:
            raise QnnRepairError(
                f"layer {layer!r} of the {self.role} ran twice in one forward pass; "
                "choose modules that run once"
            )
        if not isinstance(output, torch.Tensor):
            raise QnnRepairError(
                f"layer {layer!r} of the {self.role} returned {type(output).__name__}, "
                "not a tensor; choose Conv/Linear layers"
            )
        self._outputs[layer] = output.detach().clone()  # in-place ops downstream write into it

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._outputs = {}
        self._recording = True
        try:
            logits = self.model(images)
        finally:
            self._recording = False
        outputs, self._outputs = self._outputs, {}
        missing = [layer for layer in self.modules if layer not in outputs]
        if missing:
            raise QnnRepairError(
                f"layers {missing} of the {self.role} did not run in its forward pass"
            )
        return logits, outputs


def unpacked(
    batches: Iterable[Any], device: torch.device | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        try:
            images, labels = batch
        except (TypeError, ValueError):
            raise QnnRepairError(
                f"each batch must be a pair (images, labels), got {type(batch).__name__}"
            ) from None
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or images.dim() < 1 or images.shape[0] != labels.shape[0]:
            raise QnnRepairError(
                f"a batch has images of shape {tuple(images.shape)} and labels of shape "
                f"{tuple(labels.shape)}; give N images and N labels"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex:
            raise QnnRepairError(f"labels must be integers, got {labels.dtype}")
        yield images.to(device), labels.to(device=device, dtype=torch.int64)


def predictions(logits: Any, batch_size: int, role: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise QnnRepairError(
            f"the {role} must return logits of shape (batch, classes), got {shape}"
        )
    return logits.argmax(dim=1)


def check_layer_names(layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise QnnRepairError("no layers given; name at least one Conv/Linear layer")
    duplicates = sorted({layer for layer in layers if layers.count(layer) > 1})
    if duplicates:
        raise QnnRepairError(f"layers named more than once: {', '.join(duplicates)}")
    return layers


def resolve_layers(model: nn.Module, layers: Sequence[str], role: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in modules or layer == ""]
    if unknown:
        # Weighted layers first (nn.Conv2d/Linear, QuantConv2d/QuantLinear), else any module.
        candidates = [name for name, m in modules.items() if name and _has_weights(m)] or [
            name for name in modules if name
        ]
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        raise QnnRepairError(
            f"the {role} has no layer {', '.join(map(repr, unknown))}; valid names include: {shown}"
        )
    return {layer: modules[layer] for layer in layers}


def _has_weights(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) or hasattr(
        module, "weight_int"
    )


def device_of(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode (dropout off, BatchNorm on running statistics) and restore
    every module's own train/eval flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
