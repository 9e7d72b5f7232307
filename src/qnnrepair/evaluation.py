"""Accuracy of a model on normalized images: the one number every decision and report uses."""

from __future__ import annotations

import torch
from torch import nn

from qnnrepair.progress import progress

# Input elements per batch: 500 CIFAR images (3x32x32), 10 ImageNet images (3x224x224), whose
# activations are 50 times larger; peak memory stays the same whatever the image size.
BATCH_ELEMENTS = 500 * 3 * 32 * 32


def batch_size_for(images: torch.Tensor, limit: int = 500,
                   elements: int = BATCH_ELEMENTS) -> int:
    """How many of `images` go through a model at once: at most `limit`, fewer for large
    images (at most `elements` input elements, see BATCH_ELEMENTS)."""
    per_image = images[0].numel() if len(images) else 1
    return max(1, min(limit, elements // per_image))


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int | None = None,
              show_progress: bool = False, desc: str = "evaluate") -> torch.Tensor:
    """The model's outputs (N, classes), in eval mode; every module's train/eval flag is
    restored afterwards, also when the forward pass raises."""
    batch_size = batch_size or batch_size_for(images)
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        chunks = range(0, len(images), batch_size)
        parts = [model(images[i:i + batch_size])
                 for i in progress(chunks, show_progress, desc=desc)]
    finally:
        for module, training in flags:
            module.training = training
    return torch.cat(parts) if parts else torch.empty(0, 0)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int | None = None,
            show_progress: bool = False, desc: str = "evaluate") -> torch.Tensor:
    """Predicted class per image (int64), in eval mode (flags restored, see logits_of)."""
    if len(images) == 0:
        return torch.empty(0, dtype=torch.int64)
    return logits_of(model, images, batch_size, show_progress, desc).argmax(dim=1)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs) -> float:
    """Top-1 accuracy in percent."""
    if len(images) == 0:
        return float("nan")
    return 100.0 * (predict(model, images, **kwargs) == labels).double().mean().item()


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> list[float]:
    """Accuracy in percent of each class, from predictions already made (nan: no image)."""
    out = []
    for k in range(num_classes):
        mask = labels == k
        hits = (preds[mask] == k).double()
        out.append(100.0 * hits.mean().item() if mask.any() else float("nan"))
    return out
