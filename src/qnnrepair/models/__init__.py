"""Model zoo, user models given as `module:factory`, and safe checkpoint loading."""

from qnnrepair.models import mobilenet, paper, resnet  # noqa: F401  (registers the zoo)
from qnnrepair.models.loading import load_model, load_weights, read_state_dict
from qnnrepair.models.registry import (
    CIFAR_INPUT_SHAPE,
    CIFAR_MEAN,
    CIFAR_STD,
    ModelInfo,
    build_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "CIFAR_INPUT_SHAPE",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "ModelInfo",
    "build_model",
    "list_models",
    "load_model",
    "load_weights",
    "model_info",
    "read_state_dict",
    "register_model",
]
