"""Baselines: the registry contract for every method, then each method against an independent
computation of what its paper says it does."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.baselines import BASELINES, fit_last_layer, get_baseline, squant_round
from qnnrepair.baselines.reconstruction import reconstruction_error
from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantConfig, QuantConv2d, quantize
from qnnrepair.testing import example_inputs, scaled, tiny_conv_net

# Enough iterations for AdaRound to beat round to nearest on the tiny net, few enough for speed.
ADAROUND_ITERS = 300
FAST_PARAMS = {"adaround": {"iters": ADAROUND_ITERS, "batch_size": 16},
               "qdrop": {"iters": ADAROUND_ITERS, "batch_size": 16}}


@pytest.fixture(scope="module")
def setup():
    model, images = tiny_conv_net(), example_inputs(48)
    config = QuantConfig.from_setting("w3a8", first_last_bits=None)
    return quantize(model, config, images), images


@pytest.fixture(scope="module")
def results(setup):
    qmodel, images = setup
    before = qmodel.integer_state()
    out = {name: get_baseline(name)(qmodel, images, seed=0, **FAST_PARAMS.get(name, {}))
           for name in sorted(BASELINES)}
    return before, out


def test_registry_has_every_method():
    assert set(BASELINES) == {"rtn", "bias_correction", "squant", "adaround", "qdrop",
                              "least_squares_last_layer", "gptq", "dfq"}


def test_unknown_baseline_is_a_one_line_error():
    with pytest.raises(QnnRepairError, match="unknown baseline 'brecq'") as info:
        get_baseline("brecq")
    message = str(info.value)
    assert "\n" not in message
    for name in BASELINES:
        assert name in message


@pytest.mark.parametrize("name", sorted(["rtn", "bias_correction", "squant", "adaround",
                                         "qdrop", "least_squares_last_layer"]))
def test_returns_new_model_input_untouched_weights_on_grid(setup, results, name):
    qmodel, _ = setup
    before, out = results
    result = out[name]
    assert result is not qmodel and result.model is not qmodel.model
    after_input = qmodel.integer_state()
    for key, value in before.items():
        assert torch.equal(value, after_input[key]), f"{name} changed the input's {key}"
    changed = 0
    for layer_name in result.layers:
        layer, original = result.layer(layer_name), qmodel.layer(layer_name)
        assert layer.weight_int.dtype == torch.int8 and layer.bias_int.dtype == torch.int32
        assert int(layer.weight_int.abs().max()) <= layer.qmax
        assert torch.equal(layer.weight_scale, original.weight_scale)
        assert torch.equal(layer.input_scale, original.input_scale)
        changed += int((layer.weight_int != original.weight_int).sum())
        changed += int((layer.bias_int != original.bias_int).sum())
    print(f"{name}: {changed} integers changed")
    assert (changed == 0) == (name == "rtn")


def test_bias_correction_matches_float_mean_of_first_layer(setup, results):
    qmodel, images = setup
    corrected = results[1]["bias_correction"]
    name = qmodel.layers[0]
    layer, float_layer = corrected.layer(name), qmodel.float_layer(name)
    original = qmodel.layer(name)
    with torch.no_grad():
        float_mean = float_layer(images).double().mean(dim=(0, 2, 3))
        x = original.quantize_input(images)
        rtn_mean = F.conv2d(x, original.dequantized_weight(), original.dequantized_bias(),
                            1, 1).double().mean(dim=(0, 2, 3))
        corrected_mean = F.conv2d(x, layer.dequantized_weight(), layer.dequantized_bias(),
                                  1, 1).double().mean(dim=(0, 2, 3))
    step = layer.bias_scale().double()
    expected = original.bias_int.double() + torch.round((float_mean - rtn_mean) / step)
    gap = ((corrected_mean - float_mean).abs() / step).max().item()
    print(f"first layer: max |mean gap| before {((rtn_mean - float_mean).abs() / step).max():.2f}"
          f" bias steps, after {gap:.3f}")
    assert torch.equal(layer.bias_int.double(), expected)
    assert gap <= 0.5 + 1e-3, f"mean gap {gap} bias steps is above half a step"
    assert torch.equal(layer.weight_int, original.weight_int)


@pytest.mark.parametrize("name", ["bias_correction", "adaround"])
def test_max_images_is_the_baseline_on_that_subset(setup, name):
    """max_images calibrates on evenly spread images: the same integers as calibrating on
    exactly those images, and not those of calibrating on all."""
    qmodel, images = setup
    params = {"adaround": {"iters": 50, "batch_size": 4}}.get(name, {})
    subset = images[torch.tensor([0, 9, 19, 28, 38, 47])]
    by_count = get_baseline(name)(qmodel, images, max_images=6, **params)
    by_hand = get_baseline(name)(qmodel, subset, **params)
    full = get_baseline(name)(qmodel, images, **params)
    for key, value in by_hand.integer_state().items():
        assert torch.equal(by_count.integer_state()[key], value), key
    assert any(not torch.equal(full.integer_state()[k], v)
               for k, v in by_hand.integer_state().items()), "the subset changed nothing"


def test_squant_invariants(setup, results):
    qmodel, _ = setup
    result = results[1]["squant"]
    flipped = 0
    for name in qmodel.layers:
        x = scaled(qmodel, name)
        q = result.layer(name).weight_int.double()
        assert bool(((q == torch.floor(x)) | (q == torch.ceil(x))).all()), name
        d = q - x
        d3 = d.reshape(d.shape[0], d.shape[1], -1)
        kernel, channel = d3.sum(dim=2), d3.sum(dim=(1, 2))
        print(f"{name}: max |kernel sum| {kernel.abs().max():.3f}, "
              f"max |channel sum| {channel.abs().max():.3f}")
        assert channel.abs().max() <= 0.5 + 1e-9
        assert kernel.abs().max() < 1.0
        # Only the kernels the C step flipped exceed 0.5: ceil(|e_c| - 0.5) per channel, e_c
        # the channel sum after the K step alone (every kernel within 0.5 there).
        k_only = squant_round(qmodel.float_layer(name).weight.detach(),
                              qmodel.layer(name).weight_scale, qmodel.layer(name).qmax,
                              channel=False).double() - x
        k_only = k_only.reshape(d3.shape)
        assert k_only.sum(dim=2).abs().max() <= 0.5 + 1e-9
        n_c = torch.clamp(torch.ceil(k_only.sum(dim=(1, 2)).abs() - 0.5 - 1e-9), min=0)
        over = (kernel.abs() > 0.5 + 1e-9).sum(dim=1)
        assert torch.equal(over.double(), n_c), (over, n_c)
        flipped += int((q != torch.round(x)).sum())
    assert flipped > 0


def test_squant_kernel_level_on_a_hand_example():
    # One channel, one 1x4 kernel: w/s = [0.4, 0.4, 0.3, -0.2] -> RTN [0, 0, 0, 0], sum d = -0.9.
    # K flips ceil(0.9 - 0.5) = 1 element up: the one with the most negative d (0.4 -> first).
    weight = torch.tensor([[[[0.4, 0.4, 0.3, -0.2]]]])
    q = squant_round(weight, torch.ones(1), qmax=3, channel=False)
    assert q.flatten().tolist() == [1, 0, 0, 0]
    # Linear: every element is a kernel; the C step flips ceil(0.9 - 0.5) = 1 element.
    q = squant_round(weight.reshape(1, 4), torch.ones(1), qmax=3)
    assert q.flatten().tolist() == [1, 0, 0, 0]
    # Already within 0.5: nothing to flip.
    q = squant_round(torch.tensor([[0.4, -0.3, 0.2]]), torch.ones(1), qmax=3)
    assert q.flatten().tolist() == [0, 0, 0]


def test_adaround_rounds_up_or_down_and_beats_rtn_on_first_layer(setup, results):
    qmodel, images = setup
    result = results[1]["adaround"]
    for name in qmodel.layers:
        x = scaled(qmodel, name)
        q = result.layer(name).weight_int.double()
        assert bool(((q == torch.floor(x)) | (q == torch.ceil(x))).all()), name
    name = qmodel.layers[0]
    rtn_layer, ada_layer = qmodel.layer(name), result.layer(name)
    with torch.no_grad():
        target = qmodel.float_layer(name)(images)
        x = rtn_layer.quantize_input(images)
        errors = {}
        for label, layer in (("rtn", rtn_layer), ("adaround", ada_layer)):
            out = F.conv2d(x, layer.dequantized_weight(), layer.dequantized_bias(), 1, 1)
            errors[label] = reconstruction_error(out, target).item()
    print(f"first-layer reconstruction error: rtn {errors['rtn']:.5f}, "
          f"adaround {errors['adaround']:.5f}")
    assert errors["adaround"] <= errors["rtn"], errors


def test_least_squares_equals_numpy_lstsq_before_quantization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    images = torch.randn(60, 5)
    config = QuantConfig.from_setting("w4a8", first_last_bits=None)
    qmodel = quantize(model, config, images)
    weight, bias = fit_last_layer(qmodel, images, ridge=0.0, batch_size=25)
    layer = qmodel.layer(qmodel.layers[0])
    with torch.no_grad():
        h = layer.quantize_input(images).double().numpy()
        z = model(images).double().numpy()
    design = np.concatenate([h, np.ones((len(h), 1))], axis=1)
    solution = np.linalg.lstsq(design, z, rcond=None)[0]
    err_w = np.abs(weight.numpy() - solution[:5].T).max()
    err_b = np.abs(bias.numpy() - solution[5]).max()
    print(f"refit vs numpy lstsq: max |dW| {err_w:.2e}, max |db| {err_b:.2e}")
    assert err_w < 1e-5 and err_b < 1e-5
    # With the default tiny ridge the fit barely moves; quantization is round to nearest.
    refit = get_baseline("least_squares_last_layer")(qmodel, images)
    weight_ridge, _ = fit_last_layer(qmodel, images)
    assert np.abs(weight_ridge.numpy() - solution[:5].T).max() < 1e-3
    out = refit.layer(refit.layers[0])
    expected = torch.clamp(torch.round(weight_ridge / out.weight_scale[:, None]),
                           -out.qmax, out.qmax)
    assert torch.equal(out.weight_int.float(), expected)


def test_least_squares_needs_a_linear_last_layer():
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    images = example_inputs(4)
    qmodel = quantize(model, QuantConfig.from_setting("w8a8"), images)
    assert isinstance(qmodel.layer(qmodel.layers[-1]), QuantConv2d)
    with pytest.raises(QnnRepairError, match="needs a Linear last layer"):
        get_baseline("least_squares_last_layer")(qmodel, images)


def test_empty_calibration_set_is_an_error(setup):
    qmodel, images = setup
    with pytest.raises(QnnRepairError, match="calibration images"):
        get_baseline("bias_correction")(qmodel, images[:0])


def test_hooks_are_removed(setup):
    qmodel, images = setup
    get_baseline("bias_correction")(qmodel, images)
    for model in (qmodel.model, qmodel.float_model):
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks
