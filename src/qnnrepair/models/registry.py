"""The model zoo: a registry of architectures keyed by name, each with its `ModelInfo`.

An architecture registers itself with `@register_model(...)`, so adding one never touches
`build_model`. The `ModelInfo` says what input the network expects (shape and per-channel
normalization); data loaders check a data set against it before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.registry import Registry

# The shared CIFAR-10 checkpoints were trained with the ImageNet statistics, not CIFAR's own,
# so every CIFAR model in the zoo normalizes with these.
CIFAR_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CIFAR_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR_INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)

ModelFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects: input shape (C, H, W), class count and input normalization."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise QnnRepairError(
                f"model {self.name}: input_shape must be (C, H, W) with positive sizes, "
                f"got {self.input_shape}"
            )
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise QnnRepairError(
                f"model {self.name}: mean and std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise QnnRepairError(f"model {self.name}: std values must be positive, got {self.std}")
        if self.num_classes < 1:
            raise QnnRepairError(
                f"model {self.name}: num_classes must be at least 1, got {self.num_classes}"
            )


@dataclass(frozen=True)
class _Entry:
    factory: ModelFactory
    info: ModelInfo


_REGISTRY = Registry("model", "models")


def register_model(
    name: str,
    *,
    input_shape: tuple[int, int, int] = CIFAR_INPUT_SHAPE,
    mean: tuple[float, ...] = CIFAR_MEAN,
    std: tuple[float, ...] = CIFAR_STD,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding `factory(num_classes) -> nn.Module` to the zoo under `name`."""
    info = ModelInfo(name, input_shape, 10, tuple(mean), tuple(std))

    def decorate(factory: ModelFactory) -> ModelFactory:
        _REGISTRY.register(name, _Entry(factory, info))(factory)
        return factory

    return decorate


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QnnRepairError(
            f"unknown model {name!r}; known models: {', '.join(list_models())} "
            "(or give your own as package.module:factory or path/file.py:factory; model specs "
            "are described in docs/DATA.md)"
        ) from None


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise QnnRepairError(f"num_classes must be a positive integer, got {num_classes!r}")


def model_info(name: str, num_classes: int = 10) -> ModelInfo:
    """The `ModelInfo` of zoo model `name` built with `num_classes` outputs."""
    _check_num_classes(num_classes)
    return replace(_entry(name).info, num_classes=num_classes)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialized zoo model (training mode, as `nn.Module`s start)."""
    _check_num_classes(num_classes)
    return _entry(name).factory(num_classes)
