"""Tiny models and data for tests: fast, deterministic, no downloads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyConvNet(nn.Module):
    """conv-bn-relu, conv-bn-relu, pool, linear: every layer type the quantizer handles."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_conv_net(seed: int = 0, num_classes: int = 4) -> TinyConvNet:
    """A TinyConvNet with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = TinyConvNet(num_classes)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def example_inputs(n: int = 16, seed: int = 0, shape=(3, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator)


def blob_data(n: int = 200, num_classes: int = 4, seed: int = 0, shape=(3, 8, 8),
              noise: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = a class pattern plus noise: a task a tiny net learns in a second, not perfectly."""
    patterns = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=generator)
    images = patterns[labels] + noise * torch.randn(n, *shape, generator=generator)
    return images, labels


def trained_tiny_net(seed: int = 0, steps: int = 150) -> TinyConvNet:
    """A TinyConvNet trained on `blob_data`, in eval mode (BatchNorm statistics learned)."""
    model = tiny_conv_net(seed=seed)
    images, labels = blob_data(512, seed=10_000 + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=generator)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
