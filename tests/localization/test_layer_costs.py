"""The per-layer table: the layer broken by construction comes first, with the points it costs."""

from __future__ import annotations

from qnnrepair.localization.layer_costs import LayerCosts, layer_costs
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import RepairConfig
from qnnrepair.repair.engine import fit_localizer
from qnnrepair.testing import blob_data, trained_tiny_net


def test_the_broken_layer_comes_first_and_costs_what_it_breaks():
    model = trained_tiny_net()
    images, labels = blob_data(300, seed=5)
    qmodel = quantize(model, QuantConfig.from_setting("w8a8"), images[:100])
    broken = qmodel.layer("conv2")
    broken.weight_int.copy_(-broken.weight_int)  # every weight of conv2 with the wrong sign
    scores = fit_localizer(qmodel, images[:100], labels[:100], RepairConfig()).scores_
    table = layer_costs(qmodel, images[100:], labels[100:], scores)
    top = table.layers[0]
    assert top.layer == "conv2"
    assert table.quantized_accuracy < table.float_accuracy - 20
    # conv2 alone in float: the rest is W8A8, within a few points of float
    assert top.float_accuracy > table.float_accuracy - 5
    assert top.recovers == top.float_accuracy - table.quantized_accuracy
    assert top.quantized_accuracy < table.float_accuracy - 20  # alone quantized, it breaks it
    others = table.layers[1:]
    assert all(row.recovers <= 2 for row in others)
    assert all(row.quantized_accuracy >= table.float_accuracy - 5 for row in others)
    assert max(table.layers, key=lambda r: r.blame_share or 0).layer == "conv2"
    again = LayerCosts.from_dict(table.to_dict())
    assert again.to_text() == table.to_text() and "conv2" in table.to_text().splitlines()[2]
