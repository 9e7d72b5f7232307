"""Every step of qnnrepair on architectures as timm and torchvision write them (random weights,
nothing downloaded): a result or a one-line refusal, never a crash. The three fast rows cover
in-place ReLU6 (torchvision MobileNetV2), TF "same" padding in a Conv2d subclass with
BatchNormAct2d (timm's tf_efficientnet_lite0) and weight standardization (timm's StdConv2d)."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from qnnrepair.architectures import ARCHITECTURES, STEPS, build_architecture, check_architecture

if find_spec("timm") is None or find_spec("torchvision") is None:
    pytest.skip("needs the models extra (timm, torchvision)", allow_module_level=True)

FAST = ("tv_mobilenet_v2", "tf_efficientnet_lite0", "resnetv2_50x1_bit")


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in ARCHITECTURES])
def test_every_step_gives_a_result_or_refuses_in_one_line(name):
    model = build_architecture(name, size=32)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(images)
    row = check_architecture(model, images)
    assert set(row) == set(STEPS)
    crashes = {step: r for step, r in row.items() if r.startswith("crash")}
    assert not crashes
    for result in row.values():
        assert "\n" not in result
    assert row["w8a8"].endswith("s)"), row["w8a8"]  # quantized, not refused
    assert float(row["float"].split()[3]) <= 1e-3
    with torch.no_grad():
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)  # model untouched
