"""EfficientNet-Lite1 with its real ImageNet weights, loaded by the efficientnet-lite-pytorch
code users load it with: its convolutions are nn.Conv2d subclasses that pad "same" inside
forward. W8A8 keeps its float top-1 on real images (slow: ImageNet at 224 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qnnrepair.data import load_dataset, to_tensor
from qnnrepair.quantization import QuantConfig, quantize

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = SHARED / "models" / "imagenet" / "efficientnet-lite1-77cc7160.pth"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="shared EfficientNet-Lite1 weights absent"),
]


def test_w8a8_keeps_float_top1_on_real_images():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite1")
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    assert type(model._conv_stem).forward is not torch.nn.Conv2d.forward  # the subclass
    mean = std = (0.5, 0.5, 0.5)
    calibration = to_tensor(load_dataset(SHARED / "data/imagenet/sample1000").images[:64],
                            mean, std)
    test = load_dataset(SHARED / "data/imagenet/nips17")
    images, labels = to_tensor(test.images[:200], mean, std), torch.as_tensor(test.labels[:200])
    qmodel = quantize(model, QuantConfig.from_setting("w8a8"), calibration)
    with torch.no_grad():
        float_top1 = model(images).argmax(1)
        quant_top1 = qmodel.model(images).argmax(1)
    float_acc = 100 * float((float_top1 == labels).float().mean())
    quant_acc = 100 * float((quant_top1 == labels).float().mean())
    assert float_acc > 80  # the real weights, the float path as the user's own code runs it
    assert abs(quant_acc - float_acc) <= 1.5  # 3 of 200 images
    assert float((quant_top1 == float_top1).float().mean()) >= 0.95
