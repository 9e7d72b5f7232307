"""formats/prefix.py: candidates scored from the values the unchanged graph has at their first
change give the bits of a full pass, whatever the budget, and skip the steps before it; for
a .tflite and an ONNX QDQ graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tflite", reason="needs the tflite extra: pip install 'qnnrepair[tflite]'")
pytest.importorskip("onnxruntime", reason="needs the export extra")

from qnnrepair.evaluation import logits_of  # noqa: E402
from qnnrepair.formats.onnx_qdq import load_onnx_qdq  # noqa: E402
from qnnrepair.formats.prefix import PrefixCache, supports_prefix  # noqa: E402
from qnnrepair.formats.tflite import load_tflite  # noqa: E402
from qnnrepair.quantization import QuantConfig, quantize  # noqa: E402
from qnnrepair.repair import Repairer, preset  # noqa: E402
from qnnrepair.repair.acceptance import Guard  # noqa: E402
from qnnrepair.testing import example_inputs  # noqa: E402

from .onnx_qdq_builder import export_float, ops_net, quantize_qdq  # noqa: E402
from .tflite_builder import tiny_model  # noqa: E402


@pytest.fixture(params=["tflite-int8", "tflite-uint8", "onnx-qdq"])
def model(request, tmp_path):
    if request.param == "onnx-qdq":
        float_path = export_float(ops_net(), tmp_path / "ops.onnx")
        qdq_path = quantize_qdq(float_path, tmp_path / "ops.qdq.onnx", True, example_inputs(64),
                                False)
        return load_onnx_qdq(float_path, qdq_path)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tiny_model(request.param.removeprefix("tflite-")))
    model = load_tflite(path)
    model.model.return_logits = True  # as a repair runs it (formats/deployed.py)
    return model


def _images(model, n: int = 40) -> torch.Tensor:
    if model.format_name == "onnx-qdq":
        return example_inputs(n, seed=1)
    pixels = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3))
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float()


def _changed(model, layer: int):
    """A copy with one weight of the given layer moved one step (within its grid)."""
    copy = model.copy()
    weights = copy.layer(copy.layers[layer]).weight_int.view(-1)
    weights[0] += 1 if weights[0] < copy.layer(copy.layers[layer]).qmax else -1
    return copy.model


@pytest.mark.parametrize("budget", [0, 10**9])
def test_candidates_get_the_bits_of_a_full_pass(model, budget):
    images = _images(model)
    cache = PrefixCache(model.model, images, batch_size=16, budget_bytes=budget)
    last = len(model.layers) - 1
    # later layers first, then earlier ones, then a later one again: every path of the cache
    for layer in [last, last - 1, 1, 0, last - 1, last]:
        candidate = _changed(model, layer)
        assert torch.equal(cache.logits(candidate), logits_of(candidate, images))
    assert torch.equal(cache.logits(model.model), logits_of(model.model, images))
    if budget:
        assert cache.entries and cache.reused_steps > 0
    else:
        assert not cache.entries and cache.reused_steps == 0


def test_first_changed_step_is_the_changed_layers_step(model):
    graph = model.model
    steps = ([int(name.split(".")[1]) for name in model.layers] if model.format_name == "tflite"
             else [[f"nodes.{key}" for key, _, _ in graph.wiring].index(name)
                   for name in model.layers])
    for layer, step in enumerate(steps):
        assert _changed(model, layer).first_changed_step(graph) == step
    # unchanged: every step up to the output (a .tflite file's logits: before its softmax)
    n_steps = graph.logits_steps if model.format_name == "tflite" else len(graph.wiring)
    assert graph.first_changed_step(graph) == n_steps


def test_guard_scores_the_same_with_and_without_the_prefix(model):
    if model.format_name == "onnx-qdq":  # scored in ONNX Runtime instead (test_onnx_qdq.py)
        guard = Guard(model.float_model, _images(model), torch.zeros(40, dtype=torch.int64))
        guard.run_like(model.model)
        assert guard.runtime is not None and guard.prefix is None
        return
    images = _images(model)
    labels = torch.arange(40) % int(model.float_model(images[:1]).shape[1])
    plain = Guard(model.float_model, images, labels)
    reusing = Guard(model.float_model, images, labels)
    reusing.run_like(model.model)
    assert reusing.prefix is not None and plain.prefix is None
    for layer in [len(model.layers) - 1, 1]:
        candidate = _changed(model, layer)
        a, b = plain.score(candidate), reusing.score(candidate)
        assert (a.accuracy, a.divergence) == (b.accuracy, b.divergence)
        assert torch.equal(a.per_image, b.per_image)


def test_a_requantized_float_reference_is_run_whole(model):
    """The float graph re-quantized by qnnrepair's own quantizer (E7's W4A8 rows) holds layers
    the prefix methods do not know: the guard must score it by full passes, also after a
    change."""
    images = _images(model)
    requantized = quantize(model.float_model, QuantConfig.from_setting("w4a8"), images, seed=0)
    assert not supports_prefix(requantized.model)
    labels = torch.arange(40) % int(model.float_model(images[:1]).shape[1])
    plain = Guard(model.float_model, images, labels)
    reusing = Guard(model.float_model, images, labels)
    reusing.run_like(requantized.model)
    candidate = _changed(requantized, len(requantized.layers) - 1)
    for graph in (requantized.model, candidate):
        a, b = plain.score(graph), reusing.score(graph)
        assert torch.equal(a.per_image, b.per_image)
    assert supports_prefix(model.model) and not supports_prefix(model.float_model)


def test_a_requantized_float_reference_repairs(model):
    """E7's W4A8 rows end to end: the float graph re-quantized by qnnrepair, repaired with the
    default preset; the guard keeps only changes that do not lower validation accuracy."""
    images = _images(model, 80)
    labels = model.float_model(images).argmax(1)
    requantized = quantize(model.float_model, QuantConfig.from_setting("w4a8"), images, seed=0)
    repairer = Repairer(preset("default")).fit(requantized, images[:40], labels[:40],
                                               images[40:], labels[40:])
    guard = Guard(model.float_model, images[40:], labels[40:])
    before, after = guard.score(requantized.model), guard.score(repairer.repaired_.model)
    assert after.accuracy >= before.accuracy
