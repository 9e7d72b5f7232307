"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64, option-A shortcuts.

Module names follow the widely used reference implementation (akamaster/pytorch_resnet_cifar10),
so its checkpoints load directly: `conv1`, `bn1`, `layer{1,2,3}.{i}.conv1/bn1/conv2/bn2`,
`linear`. Each conv feeds only its BatchNorm, so BN folding can merge the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad channels equally on both sides.

    It has no parameters, which is why the checkpoints hold no shortcut weights. A module
    (not a lambda) so that models deep-copy, pickle and trace.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_before = (planes - in_planes) // 2
        self.pad_after = planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs with a residual connection; ReLU after the first BN and the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Not in place: a forward hook on bn2 must see bn2's own output, not the sum.
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with `blocks_per_stage` basic blocks in each of three stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = _stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = _stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialization, as in the paper and the reference implementation.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@register_model("resnet20")
def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


@register_model("resnet32")
def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes)


@register_model("resnet44")
def resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(7, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)
