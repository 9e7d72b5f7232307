"""A layer's reconstruction error from per-image statistics is the error from its activations."""

import importlib

import pytest
import torch
from torch import nn

from qnnrepair.baselines import get_baseline
from qnnrepair.baselines.reconstruction import Activations, Statistics, fits_statistics
from qnnrepair.quantization import QuantConfig, QuantConv2d, QuantLinear, quantize

GEOMETRIES = {  # in, out, kernel, stride, padding, dilation, groups
    "3x3": (4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "3x3 stride 2": (4, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "depthwise": (6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),
    "grouped, dilated": (4, 6, (3, 3), (1, 1), (2, 2), (2, 2), 2),
    "1x1": (4, 6, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "3x2 uneven": (4, 6, (3, 2), (2, 1), (1, 0), (1, 1), 1),
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_statistics_give_the_activations_error_and_gradient(geometry):
    c_in, c_out, kernel, stride, padding, dilation, groups = GEOMETRIES[geometry]
    layer = QuantConv2d(c_in, c_out, kernel, stride, padding, dilation, groups)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(6, c_in, 9, 7, generator=generator)
    weight = torch.randn(c_out, c_in // groups, *kernel, generator=generator)
    bias = torch.randn(c_out, generator=generator)
    exact = nn.functional.conv2d(inputs, weight, bias, stride, padding, dilation, groups)
    targets = exact + 0.3 * torch.randn(exact.shape, generator=generator)
    direct = Activations(layer, inputs, targets, bias)
    stats = Statistics(layer, bias)
    stats.add(inputs[:4], targets[:4])  # in two batches, as captured
    stats.add(inputs[4:], targets[4:])
    assert len(stats) == len(direct) == 6
    for pick in (torch.tensor([0, 2, 5]), torch.tensor([4, 4, 1]), slice(0, 6)):
        w1 = (weight + 0.1).requires_grad_(True)
        w2 = (weight + 0.1).requires_grad_(True)
        e1, e2 = direct.error(pick, w1), stats.error(pick, w2)
        e1.backward()
        e2.backward()
        assert e2.item() == pytest.approx(e1.item(), rel=1e-5), geometry
        torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-4, atol=1e-5)
    # at the float weight only the noise is left: 0.09 per channel and position
    assert stats.error(slice(0, 6), weight).item() == pytest.approx(0.09 * c_out, rel=0.1)


def test_statistics_are_chosen_where_smaller_than_activations():
    wide_1x1 = QuantConv2d(16, 96, (1, 1))
    deep_3x3 = QuantConv2d(64, 64, (3, 3), padding=(1, 1))
    assert fits_statistics(wide_1x1, torch.Size([16, 112, 112]), 96)
    assert not fits_statistics(deep_3x3, torch.Size([64, 8, 8]), 64)
    assert not fits_statistics(QuantLinear(1280, 1000), torch.Size([1280]), 1000)
    same = QuantConv2d(16, 96, (1, 1), padding="same")
    assert not fits_statistics(same, torch.Size([16, 112, 112]), 96)


def test_adaround_learns_the_same_rounding_from_statistics(monkeypatch):
    """A net whose convolutions all take the statistics path: AdaRound's integers equal those
    learned from the activations, but for weights whose rounding float error tips."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    images = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    qmodel = quantize(model, QuantConfig.from_setting("w3a8", first_last_bits=None), images)
    adaround_module = importlib.import_module("qnnrepair.baselines.adaround")
    chosen = []
    original = adaround_module.fits_statistics

    def spy(layer, shape, channels):
        chosen.append(original(layer, shape, channels))
        return chosen[-1]

    monkeypatch.setattr(adaround_module, "fits_statistics", spy)
    params = {"iters": 200, "batch_size": 8, "seed": 3}
    ours = get_baseline("adaround")(qmodel, images, **params).integer_state()
    assert chosen == [True, True, False], chosen
    monkeypatch.setattr(adaround_module, "fits_statistics", lambda *a: False)
    direct = get_baseline("adaround")(qmodel, images, **params).integer_state()
    weights = [k for k in ours if k.endswith("weight_int")]
    total = sum(ours[k].numel() for k in weights)
    differing = sum(int((ours[k] != direct[k]).sum()) for k in weights)
    changed = sum(int((ours[k] != v).sum()) for k, v in qmodel.integer_state().items())
    print(f"adaround changed {changed} integers; statistics and activations differ in "
          f"{differing} of {total}")
    assert changed > 0 and differing <= 0.01 * total
