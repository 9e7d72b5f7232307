"""The accumulator of a deployed layer, computed by each of its paths, against the exact sum."""

import pytest
import torch

from qnnrepair.formats.layers import DeployedConv2d, DeployedLinear


def _layer(kind, act_range, zero_point, weight, bias):
    common = dict(weight_scale=torch.full((len(weight),), 0.01),
                  weight_zero_point=torch.zeros(len(weight), dtype=torch.int32),
                  bias_int=bias, input_scale=0.05, input_zero_point=zero_point,
                  act_range=act_range, weight_range=(-128, 127), per_channel=True)
    return (DeployedLinear(weight, **common) if kind == "dense"
            else DeployedConv2d(weight[:, :, None, None], **common))


@pytest.mark.parametrize("kind", ["dense", "pointwise"])
@pytest.mark.parametrize("act_range, zero_point", [((-128, 127), -3), ((-128, 127), 100),
                                                   ((0, 255), 0), ((0, 255), 131)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int8_product_is_the_exact_accumulator(kind, act_range, zero_point, layout):
    g = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (7, 40), generator=g)
    bias = torch.randint(-50_000, 50_000, (7,), generator=g, dtype=torch.int32)
    layer = _layer(kind, act_range, zero_point, weight, bias)
    assert layer._int8_product_exact()
    lo, hi = act_range[0] - zero_point, act_range[1] - zero_point
    shape = (5, 40) if kind == "dense" else (2, 40, 3, 4)
    xi = torch.randint(lo, hi + 1, shape, generator=g).float()
    if kind == "pointwise" and layout == "channels_last":
        xi = xi.contiguous(memory_format=torch.channels_last)
    w = weight.double() if kind == "dense" else weight.double()[:, :, None, None]
    exact = (torch.nn.functional.linear(xi.double(), w, bias.double()) if kind == "dense" else
             torch.nn.functional.conv2d(xi.double(), w, bias.double()))
    got = layer.integer_accumulator(xi)
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert torch.equal(got, exact.float())


def test_weights_outside_int8_take_the_float_path():
    weight = torch.randint(-128, 128, (3, 8))
    weight[0, 0] = 200  # a uint8 file's centred weight can leave int8
    layer = _layer("dense", (0, 255), 128, weight, torch.zeros(3, dtype=torch.int32))
    assert not layer._int8_product_exact()
    xi = torch.randint(-128, 128, (4, 8)).float()
    assert torch.equal(layer.integer_accumulator(xi),
                       (xi.double() @ weight.double().t()).float())
