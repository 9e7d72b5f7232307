"""EfficientNet-Lite1 with its ImageNet weights, as users load it: the efficientnet-lite-pytorch
code (Conv2d subclasses that pad "same" in forward) and ../shared's float weights.

    qnnrepair evaluate --model benchmarks/efficientnet_lite.py:lite1 --num-classes 1000 \\
        --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --setting w8a8 \\
        --data ../shared/data/imagenet/sample1000 --test-data ../shared/data/imagenet/nips17
"""

from pathlib import Path

import torch

WEIGHTS = (Path(__file__).resolve().parents[1].parent / "shared" / "models" / "imagenet"
           / "efficientnet-lite1-77cc7160.pth")


def lite1() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite1")
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
