"""A small MobileNetV2-style CIFAR network (Sandler et al. 2018), inverted residual blocks.

Sized for 32x32 inputs and CPU work: the stem keeps stride 1 and the block table stops at 96
channels (the ImageNet model goes to 320 and downsamples 32x). Every conv feeds only its
BatchNorm, and each ReLU6 is its own module.
"""

from __future__ import annotations

import torch
from torch import nn

from qnnrepair.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 512


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.use_residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # linear bottleneck: no activation
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual stages, 1x1 head conv, global average pool, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.relu1 = nn.ReLU6()
        blocks = []
        in_planes = _STEM_CHANNELS
        for expansion, out_planes, repeats, stride in _BLOCKS:
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1)
                )
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, _HEAD_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(_HEAD_CHANNELS)
        self.relu2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(self.flatten(self.pool(out)))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes)
