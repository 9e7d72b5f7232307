"""From stored pixels to model input, and the check that a data set fits a model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qnnrepair.data.dataset import Dataset
from qnnrepair.errors import QnnRepairError
from qnnrepair.models.registry import ModelInfo


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NHWC pixels -> float32 NCHW, scaled to [0, 1] and then normalized per channel.

    The order (scale, then normalize) is torchvision's ToTensor + Normalize, which is how the
    shared checkpoints were trained; their exact test accuracy depends on it.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise QnnRepairError(f"to_tensor needs uint8 images (N, H, W, C), got {dtype} {shape}")
    channels = images.shape[3]
    if len(mean) != channels or len(std) != channels:
        raise QnnRepairError(
            f"images have {channels} channels but mean/std have {len(mean)}/{len(std)} values"
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t).contiguous()


def check_compatible(dataset: Dataset, info: ModelInfo) -> None:
    """Raise a one-line error unless the images have the model's input shape and the labels
    are within its classes."""
    h, w, c = dataset.image_shape
    want_c, want_h, want_w = info.input_shape
    if (h, w, c) != (want_h, want_w, want_c):
        raise QnnRepairError(
            f"images are {h}x{w}x{c}, model {info.name} expects {want_h}x{want_w}x{want_c}; "
            "use a data set made for this model"
        )
    if len(dataset) and int(dataset.labels.max()) >= info.num_classes:
        # A zoo model is built with --num-classes outputs; a user's model has its own.
        fix = ("check the labels or the model's output layer" if ":" in info.name else
               f"use matching data or pass --num-classes {int(dataset.labels.max()) + 1} "
               "(num_classes in Python)")
        raise QnnRepairError(
            f"labels go up to {int(dataset.labels.max())}, model {info.name} has "
            f"{info.num_classes} classes (labels 0..{info.num_classes - 1}; image "
            f"{int(np.argmax(dataset.labels >= info.num_classes))} is the first out of range); "
            f"{fix}"
        )
