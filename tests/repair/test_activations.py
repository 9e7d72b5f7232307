"""Recorded LP rows against direct computations."""

import numpy as np
import torch
import torch.nn.functional as F

from qnnrepair.quantization import QuantConv2d
from qnnrepair.repair.activations import patches_at


def test_patches_at_equal_unfold_columns():
    torch.manual_seed(0)
    for stride, padding, dilation, groups in [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1),
                                             (2, 1, 1, 4)]:
        layer = QuantConv2d(8, 8, (3, 3), stride, padding, dilation, groups)
        x = torch.randn(5, 8, 9, 9)
        cols = F.unfold(x, (3, 3), dilation, padding, stride)  # (n, C*9, L)
        out_w = (9 + 2 * padding - dilation * 2 - 1) // stride + 1
        image = torch.tensor([0, 3, 4, 4])
        pos = torch.tensor([0, 5, 7, out_w * out_w - 1])
        got = patches_at(layer, x, image, pos // out_w, pos % out_w)
        want = cols[image, :, pos]
        assert torch.equal(got, want), f"stride {stride} padding {padding} dilation {dilation}"


def test_known_float_rows_skip_the_float_pass_and_change_nothing():
    from qnnrepair.quantization import QuantConfig, quantize
    from qnnrepair.repair.activations import record_layers
    from qnnrepair.testing import example_inputs, tiny_conv_net

    torch.manual_seed(0)
    model = tiny_conv_net().eval()
    images = example_inputs(12)
    qmodel = quantize(model, QuantConfig.from_setting("w4a8"), images)
    first, name = qmodel.layers[:2]
    full = record_layers(qmodel, [name], images, 40, seed=3)[name]
    qmodel.layer(first).weight_int[0] += 1  # a repair upstream changes the quantized model only
    calls = []
    handle = qmodel.float_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        reused = record_layers(qmodel, [name], images, 40, seed=3,
                               float_out={name: full.float_out})[name]
    finally:
        handle.remove()
    assert not calls
    fresh = record_layers(qmodel, [name], images, 40, seed=3)[name]
    for field in ("inputs", "float_out", "image"):
        assert (getattr(reused, field) == getattr(fresh, field)).all(), field
    assert (fresh.inputs != full.inputs).any()


def test_rows_recorded_in_one_pass_equal_those_of_a_pass_per_layer():
    """record_in_pass (one batch, the visitor repairing each layer before it computes) gives
    each layer the rows record_layers gives it on the model repaired up to that layer:
    the same positions, the same inputs."""
    from qnnrepair.quantization import QuantConfig, quantize
    from qnnrepair.repair.activations import record_in_pass, record_layers
    from qnnrepair.testing import example_inputs, tiny_conv_net

    torch.manual_seed(0)
    images = example_inputs(20)
    qmodel = quantize(tiny_conv_net().eval(), QuantConfig.from_setting("w4a8"), images)
    names = qmodel.layers  # two convs and a linear layer
    expected, in_pass = {}, {}
    reference = qmodel.copy()
    for name in names:  # a pass per layer, each after the "repair" of the layers before it
        expected[name] = record_layers(reference, [name], images, 60, seed=5, batch_size=7)[name]
        reference.layer(name).weight_int[:, ...] //= 2

    def visit(name, rows):
        in_pass[name] = rows()
        qmodel.layer(name).weight_int[:, ...] //= 2

    record_in_pass(qmodel, names, images, 60, 5, visit, stop=names[-1])
    assert list(in_pass) == names
    for name in names:
        inputs, image = in_pass[name]
        assert len(inputs) > len(images) or name == names[-1]  # convs: several rows an image
        assert np.array_equal(inputs, expected[name].inputs), name
        assert np.array_equal(image, expected[name].image), name
