"""The quantizer against independent computations: integer arithmetic, numpy rounding, BN math."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantConfig, QuantConv2d, QuantLinear, fold_batchnorm, quantize
from qnnrepair.quantization.primitives import (
    activation_qparams,
    fake_quantize_activation,
    weight_scale,
)
from qnnrepair.testing import example_inputs, tiny_conv_net


def integer_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """What an integer kernel computes: int accumulation of q_w * (q_x - z_x) + q_b, then rescale.

    float64 holds these integers exactly (|acc| << 2^53), so conv2d in float64 is exact integer
    arithmetic here.
    """
    s_x, z_x = layer.input_scale.double(), layer.input_zero_point.double()
    q_x = torch.clamp(torch.round(x.double() / s_x) + z_x, 0, 2**layer.act_bits - 1) - z_x
    q_w = layer.weight_int.double()
    if isinstance(layer, QuantConv2d):
        acc = F.conv2d(q_x, q_w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        acc = acc + layer.bias_int.double()[None, :, None, None]
        scale = (layer.weight_scale.double() * s_x)[None, :, None, None]
    else:
        acc = q_x @ q_w.T + layer.bias_int.double()
        scale = layer.weight_scale.double() * s_x
    assert torch.equal(acc, torch.round(acc)), "accumulator is not integer"
    return acc * scale


@pytest.mark.parametrize("setting", ["w8a8", "w4a8", "w3a4", "w2a2"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_simulation_equals_integer_arithmetic(setting, per_channel):
    model, x = tiny_conv_net(), example_inputs(32)
    config = QuantConfig.from_setting(setting, per_channel=per_channel, first_last_bits=None)
    qmodel = quantize(model, config, x)
    for name in qmodel.layers:
        layer = qmodel.layer(name)
        inputs = {}
        handle = layer.register_forward_pre_hook(
            lambda m, i, store=inputs: store.setdefault("x", i[0]))
        qmodel.model(x)
        handle.remove()
        got = layer(inputs["x"]).double()
        want = integer_reference(layer, inputs["x"])
        err = (got - want).abs().max().item() / want.abs().max().item()
        assert err < 1e-5, f"{name} {setting}: relative error {err:.2e} >= 1e-5"


def test_weights_are_integers_on_the_symmetric_grid():
    qmodel = quantize(tiny_conv_net(), QuantConfig.from_setting("w3a8", first_last_bits=None),
                      example_inputs())
    for name in qmodel.layers:
        q = qmodel.layer(name).weight_int
        assert q.dtype == torch.int8
        assert q.abs().max().item() <= 3, f"{name}: 3-bit grid is [-3, 3], got {q.abs().max()}"


def test_weight_rounding_matches_numpy():
    torch.manual_seed(1)
    linear = torch.nn.Linear(7, 5)
    layer = quantize(torch.nn.Sequential(linear), QuantConfig.from_setting("w4a8",
                     first_last_bits=None), torch.randn(8, 7)).layer("0")
    w = linear.weight.detach().numpy().astype(np.float64)
    want_scale = np.abs(w).max(axis=1) / 7
    np.testing.assert_allclose(layer.weight_scale.numpy(), want_scale, rtol=1e-6)
    want = np.clip(np.rint(w / want_scale[:, None]), -7, 7)  # rint: half to even, as torch.round
    assert np.array_equal(layer.weight_int.numpy(), want)


def test_per_tensor_scale_is_shared():
    w = torch.randn(4, 3, 3, 3)
    scale = weight_scale(w, 8, per_channel=False, clipping="maxabs")
    assert torch.all(scale == scale[0]) and scale.shape == (4,)
    assert scale[0].item() == pytest.approx(w.abs().max().item() / 127, rel=1e-6)


def test_mse_clipping_never_worse_than_maxabs():
    torch.manual_seed(2)
    w = torch.randn(16, 64) * torch.linspace(0.1, 2, 64)  # heavy columns make clipping pay
    for bits in (2, 3, 4, 8):
        errs = {}
        for clipping in ("maxabs", "mse"):
            s = weight_scale(w, bits, True, clipping)[:, None]
            qmax = 2 ** (bits - 1) - 1
            errs[clipping] = ((torch.clamp(torch.round(w / s), -qmax, qmax) * s - w) ** 2).sum()
        assert errs["mse"] <= errs["maxabs"] * (1 + 1e-6), f"{bits} bits: {errs}"


def test_activation_grid_represents_zero_exactly():
    for lo, hi in [(0.0, 6.0), (-1.3, 2.7), (0.5, 3.0), (-4.0, -1.0)]:
        scale, zp = activation_qparams(lo, hi, 8)
        assert 0 <= zp <= 255
        assert (0 - zp) * scale + zp * scale == 0.0  # q = zp dequantizes to exactly 0


def test_batchnorm_folding_preserves_outputs():
    model, x = tiny_conv_net(), example_inputs()
    folded, pairs = fold_batchnorm(model, x[:2])
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    err = (folded(x) - model(x)).abs().max().item()
    assert err < 1e-5, f"folding changed outputs by {err}"
    assert isinstance(model.bn1, torch.nn.BatchNorm2d), "the input model must not be changed"


def test_w8a8_is_close_to_float():
    model, x = tiny_conv_net(), example_inputs(64)
    qmodel = quantize(model, QuantConfig(), x)
    rel = ((qmodel.model(x) - model(x)).norm() / model(x).norm()).item()
    assert rel < 0.02, f"W8A8 relative output error {rel:.4f} >= 0.02"


def test_first_last_bits_and_overrides():
    config = QuantConfig.from_setting("w4a4").with_overrides({"conv2": (6, 5)})
    qmodel = quantize(tiny_conv_net(), config, example_inputs())
    bits = {n: (qmodel.layer(n).weight_bits, qmodel.layer(n).act_bits) for n in qmodel.layers}
    assert bits == {"conv1": (8, 8), "conv2": (6, 5), "linear": (8, 8)}
    assert isinstance(qmodel.layer("linear"), QuantLinear)


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "mse"])
def test_calibrations_run_and_stay_close(calibration):
    model, x = tiny_conv_net(), example_inputs(64)
    qmodel = quantize(model, QuantConfig(act_calibration=calibration), x)
    rel = ((qmodel.model(x) - model(x)).norm() / model(x).norm()).item()
    assert rel < 0.05, f"{calibration}: relative output error {rel:.4f}"


@pytest.mark.parametrize("bad", ["w9a8", "w1a8", "int8", "w4", ""])
def test_bad_setting_is_a_one_line_error(bad):
    with pytest.raises(QnnRepairError) as err:
        QuantConfig.from_setting(bad)
    assert "\n" not in str(err.value)


def test_config_round_trips_through_dict():
    config = QuantConfig.from_setting("w3a8", weight_clipping="mse").with_overrides({"a.b": (8, 8)})
    assert QuantConfig.from_dict(config.to_dict()) == config


def test_save_load_round_trips_exactly(tmp_path):
    from qnnrepair.quantization import load_quantized, save_quantized

    model, x = tiny_conv_net(), example_inputs(32)
    config = QuantConfig.from_setting("w3a4", weight_clipping="mse").with_overrides(
        {"conv2": (5, 6)})
    qmodel = quantize(model, config, x, model_spec="qnnrepair.testing:tiny_conv_net")
    qmodel.layer("conv2").weight_int[0, 0, 0, 0] = 3  # a repaired integer survives too
    save_quantized(qmodel, tmp_path / "q.qnn")
    loaded = load_quantized(tmp_path / "q.qnn")
    assert loaded.config == config and loaded.layers == qmodel.layers
    for key, value in qmodel.integer_state().items():
        assert torch.equal(loaded.integer_state()[key], value), key
    assert torch.equal(loaded.model(x), qmodel.model(x))
    assert torch.equal(loaded.float_model(x), qmodel.float_model(x))
    assert [f.name for f in tmp_path.iterdir()] == ["q.qnn"], "temporary file left behind"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantize_activation_in_place_path_equals_the_autograd_one(dtype, bits):
    """Without autograd the function works in place on a copy; it must give the same bits as
    the out-of-place formula (the repair's decisions depend on them) and leave x alone."""
    generator = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 8, 5, 5, generator=generator, dtype=dtype) * 3
    x_before = x.clone()
    for scale, zero_point in [(0.037, 7), (torch.tensor(0.011), torch.tensor(0))]:
        with torch.no_grad():
            fast = fake_quantize_activation(x, scale, zero_point, bits)
        reference = torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1)
        reference = (reference - zero_point) * scale
        assert torch.equal(fast, reference) and fast.dtype == reference.dtype
        assert torch.equal(x, x_before)
        tracked = x.clone().requires_grad_(True)
        slow = fake_quantize_activation(tracked, scale, zero_point, bits)
        assert torch.equal(slow.detach(), reference)
