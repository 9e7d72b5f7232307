"""The accumulator of a deployed layer, computed by each of its paths, against the exact sum."""

import pytest
import torch

from qnnrepair.formats.layers import DeployedConv2d, DeployedLinear, zero_pad


def _layer(kind, act_range, zero_point, weight, bias):
    common = dict(weight_scale=torch.full((len(weight),), 0.01),
                  weight_zero_point=torch.zeros(len(weight), dtype=torch.int32),
                  bias_int=bias, input_scale=0.05, input_zero_point=zero_point,
                  act_range=act_range, weight_range=(-128, 127), per_channel=True)
    return (DeployedLinear(weight, **common) if kind == "dense"
            else DeployedConv2d(weight[:, :, None, None], **common))


@pytest.mark.parametrize("kind", ["dense", "pointwise"])
@pytest.mark.parametrize("act_range, zero_point", [((-128, 127), -3), ((-128, 127), 100),
                                                   ((-128, 127), 0), ((-128, 127), -128),
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


def test_a_weight_written_in_place_changes_the_path_and_the_sum():
    """The exactness checks are kept between passes: an in-place write (as a repair makes)
    must still move a layer off the int8 product and change its accumulator."""
    weight = torch.randint(-128, 128, (3, 8), generator=torch.Generator().manual_seed(1))
    layer = _layer("dense", (0, 255), 128, weight, torch.zeros(3, dtype=torch.int32))
    xi = torch.randint(-128, 128, (4, 8)).float()
    layer.integer_accumulator(xi)
    assert layer._int8_product_exact()
    layer.weight_int[1, 2] = 300
    assert not layer._int8_product_exact()
    expected = xi.double() @ layer.weight_int.double().t()
    assert torch.equal(layer.integer_accumulator(xi), expected.float())


@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 1, 1, 1), (2, 0, 1, 3)])
def test_a_large_bias_is_added_exactly(pads):
    """Partial sums below 2^24 and a bias above it: float32 sums plus the bias as int32,
    rounded to float32 once, as the float64 sum is."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randint(-128, 128, (4, 3, 3, 3), generator=g)
    bias = torch.randint(2**26, 2**28, (4,), generator=g, dtype=torch.int32)
    layer = DeployedConv2d(weight, weight_scale=torch.full((4,), 0.01),
                           weight_zero_point=torch.zeros(4, dtype=torch.int32), bias_int=bias,
                           input_scale=0.05, input_zero_point=-128, act_range=(-128, 127),
                           weight_range=(-128, 127), per_channel=True, stride=(2, 2))
    xi = torch.randint(0, 256, (2, 3, 9, 8), generator=g).float()
    xi = xi.contiguous(memory_format=torch.channels_last)
    exact = torch.nn.functional.conv2d(torch.nn.functional.pad(xi.double(), pads),
                                       weight.double(), bias.double(), stride=2)
    assert torch.equal(layer.integer_accumulator(xi, pads), exact.float())


@pytest.mark.parametrize("channels_last", [False, True])
def test_zero_pad_is_f_pad(channels_last):
    x = torch.randn(2, 3, 5, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for pads in [(0, 1, 0, 1), (2, 0, 1, 3), (1, 1, 1, 1)]:
        got = zero_pad(x, pads)
        assert torch.equal(got, torch.nn.functional.pad(x, pads))
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
