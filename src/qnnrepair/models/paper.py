"""The CIFAR-10 networks of the QNNRepair paper (Song et al., SEFM 2023): Conv3, Conv5, VGG.

Each is an `nn.Sequential` with named children, so layer names read like the paper's
(`conv1`, `fc1`, ...) and every activation is its own `nn.ReLU` module, which is what a
forward hook on a neuron's layer needs. Convs use 'same' padding except in Conv3, which
mirrors the paper's Keras model ('valid' convolutions).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from qnnrepair.models.registry import register_model


class Conv3(nn.Sequential):
    """conv 3->32, ReLU, conv 32->64, ReLU, maxpool 2, dense 64, ReLU, dense num_classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 32, 3),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 64, 3),
                relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(64 * 14 * 14, 64),  # 32 -> 30 -> 28 -> pool -> 14
                relu3=nn.ReLU(),
                fc2=nn.Linear(64, num_classes),
            )
        )


class Conv5(nn.Sequential):
    """Five 3x3 convs (32, 32, 64, 64, 128) with ReLU and three max-pools, dense 512, dense out."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 32, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 32, 3, padding=1),
                relu2=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv3=nn.Conv2d(32, 64, 3, padding=1),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(64, 64, 3, padding=1),
                relu4=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                conv5=nn.Conv2d(64, 128, 3, padding=1),
                relu5=nn.ReLU(),
                pool3=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(128 * 4 * 4, 512),
                relu6=nn.ReLU(),
                fc2=nn.Linear(512, num_classes),
            )
        )


# Output widths of the conv blocks; 'M' is a 2x2 max-pool closing a block.
_VGG_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256))


class VGG(nn.Sequential):
    """Three VGG blocks of conv-BN-ReLU pairs and a max-pool, then dense 512, 512, num_classes."""

    def __init__(self, num_classes: int = 10) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for b, widths in enumerate(_VGG_BLOCKS, start=1):
            for c, width in enumerate(widths, start=1):
                layers[f"block{b}_conv{c}"] = nn.Conv2d(
                    in_channels, width, 3, padding=1, bias=False
                )
                layers[f"block{b}_bn{c}"] = nn.BatchNorm2d(width)
                layers[f"block{b}_relu{c}"] = nn.ReLU()
                in_channels = width
            layers[f"block{b}_pool"] = nn.MaxPool2d(2)
        side = 32 // 2 ** len(_VGG_BLOCKS)
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(in_channels * side * side, 512)
        layers["relu_fc1"] = nn.ReLU()
        layers["fc2"] = nn.Linear(512, 512)
        layers["relu_fc2"] = nn.ReLU()
        layers["fc3"] = nn.Linear(512, num_classes)
        super().__init__(layers)


@register_model("conv3")
def conv3(num_classes: int = 10) -> Conv3:
    return Conv3(num_classes)


@register_model("conv5")
def conv5(num_classes: int = 10) -> Conv5:
    return Conv5(num_classes)


@register_model("vgg")
def vgg(num_classes: int = 10) -> VGG:
    return VGG(num_classes)
