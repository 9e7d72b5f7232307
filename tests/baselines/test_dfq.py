"""DFQ: cross-layer equalization keeps the float function and equalizes the ranges; the pairs
are found through ReLU, ReLU6 (in place too), depthwise layers and not across a residual add."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qnnrepair.baselines import get_baseline
from qnnrepair.baselines.dfq import equalizable_pairs, equalize, input_ranges, output_ranges
from qnnrepair.quantization import QuantConfig, quantize


def mobile_block(act=nn.ReLU, inplace=False) -> nn.Module:
    """pointwise -> act -> depthwise -> act -> pointwise -> pool -> linear, with channel ranges
    that differ by orders of magnitude (what equalization is for)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), act(inplace=inplace),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), act(inplace=inplace),
                        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 4)).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-2, 1, 8)[:, None, None, None])
        net[0].bias.mul_(torch.logspace(-2, 1, 8))
    return net


def images(n=32):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def layer_names(net):
    return [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_pairs_through_relu_and_depthwise():
    net = mobile_block()
    pairs = equalizable_pairs(net, layer_names(net), images(2))
    assert [(p.first, p.second, p.clipped) for p in pairs] == [("0", "2", False),
                                                               ("2", "4", False)]


def test_equalization_keeps_the_function_and_equalizes_a_pair():
    net, x = mobile_block(), images()
    with torch.no_grad():
        before = net(x)
    spread_before = output_ranges(net[0]).max() / output_ranges(net[0]).min()
    pairs = equalizable_pairs(net, layer_names(net), x[:2])
    equalize(net, pairs[:1], x, iterations=1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output_ranges(net[0]), input_ranges(net[2]), rtol=1e-5, atol=0)
    equalize(net, pairs, x, iterations=4)  # the chain, both pairs
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    spread = output_ranges(net[0]).max() / output_ranges(net[0]).min()
    assert spread < spread_before / 30


def test_relu6_in_place_keeps_the_function_on_the_calibration_images():
    net, x = mobile_block(nn.ReLU6, inplace=True), images()
    with torch.no_grad():
        before = net(x)
    pairs = equalizable_pairs(net, layer_names(net), x[:2])
    assert [p.clipped for p in pairs] == [True, True]
    equalize(net, pairs, x, iterations=4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


class Clamp(nn.Module):
    """ReLU / ReLU6 written as a clamp, after a look at the input's shape, as a .tflite file's
    float reference and much user code apply them."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def forward(self, x):
        assert x.dim() == 4 and x.is_contiguous()  # metadata queries do not end a chain
        return {"torch.clamp 0 6": lambda: torch.clamp(x, 0.0, 6.0),
                "x.clamp(min=0, max=6)": lambda: x.clamp(min=0, max=6),
                "x.clamp_(0, 6)": lambda: x.clamp_(0, 6),
                "x.clamp(min=0)": lambda: x.clamp(min=0.0),
                "torch.clamp_min 0": lambda: torch.clamp_min(x, 0),
                "x.clamp(-1, 1)": lambda: x.clamp(-1, 1),
                "x.clamp(0, 4)": lambda: x.clamp(0, 4)}[self.form]()


@pytest.mark.parametrize("form, clipped", [("torch.clamp 0 6", True),
                                           ("x.clamp(min=0, max=6)", True),
                                           ("x.clamp_(0, 6)", True), ("x.clamp(min=0)", False),
                                           ("torch.clamp_min 0", False),
                                           ("x.clamp(-1, 1)", None), ("x.clamp(0, 4)", None)])
def test_pairs_through_an_activation_written_as_a_clamp(form, clipped):
    net, x = mobile_block(lambda inplace: Clamp(form)), images()
    pairs = equalizable_pairs(net, layer_names(net), x[:2])
    if clipped is None:  # not a ReLU or ReLU6: scaling through it would change the function
        assert pairs == []
        return
    assert [(p.first, p.second, p.clipped) for p in pairs] == [("0", "2", clipped),
                                                               ("2", "4", clipped)]
    with torch.no_grad():
        before = net(x)
        equalize(net, pairs, x, iterations=4)
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


def test_no_pair_through_a_write_into_the_activation():
    class Overwrite(nn.Module):
        def forward(self, x):
            y = torch.relu(x)
            y[:, 0] = 5.0  # not homogeneous: scaling y's channels would change what B reads
            return y

    net = mobile_block(lambda inplace: Overwrite())
    assert equalizable_pairs(net, layer_names(net), images(2)) == []


def test_no_pair_across_a_residual_add():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.fc((self.b(y) + y).mean((2, 3)))

    net = Residual().eval()
    assert equalizable_pairs(net, ["a", "b", "fc"], images(2)) == []


def test_baseline_beats_per_tensor_rtn_on_unequal_channels():
    net, x = mobile_block(), images(64)
    qmodel = quantize(net, QuantConfig.from_setting("w4a8", per_channel=False), x)
    out = get_baseline("dfq")(qmodel, x)
    with torch.no_grad():
        f = net(x)
        err_rtn = (qmodel.model(x) - f).pow(2).mean()
        err_dfq = (out.model(x) - f).pow(2).mean()
        torch.testing.assert_close(out.float_model(x), f, rtol=1e-4, atol=1e-5)
    assert err_dfq < 0.5 * err_rtn
