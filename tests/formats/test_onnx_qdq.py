"""formats/onnx_qdq: reading a float ONNX model and the QDQ model ONNX Runtime's quantize_static
wrote from it, simulating it like ONNX Runtime, writing it back.

Fast tests export tiny torch nets (onnx_qdq_builder.py) and quantize them with ORT, per tensor
and per channel, int8 (ORT's default) and uint8 (asymmetric weight grid); the slow one uses the
shared ResNet-20.

Tolerances. Against ORT with graph optimizations off (the QDQ graph as written) the simulation
recovers every integer exactly, computes convolutions in exact integer arithmetic and sums
average-pool windows in ORT's order; ORT sums the dequantized float32 products of a conv in its
own order, so a conv output within float32 rounding of a half step can land on the other
integer (measured on the tiny nets: 0 or 1 output of 256 inputs, one step of the output grid).
So: at least EXACT_SHARE of the inputs give the same logits to LOGIT_TOL, the others are
within FLIP_STEPS steps of the output grid, and top-1 is equal away from near ties. With
optimizations on, ORT fuses QDQ groups into integer kernels (QLinearConv, QLinearAdd, ...) with
their own rounding and, on CPUs without VNNI, int16 saturation (see tests/test_export.py):
logits within FUSED_STEPS steps, top-1 equal away from near ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from qnnrepair.errors import QnnRepairError  # noqa: E402
from qnnrepair.formats.layers import DeployedLayer  # noqa: E402
from qnnrepair.formats.onnx_qdq import (  # noqa: E402
    QDQConv2d,
    QDQLinear,
    load_onnx_qdq,
    write_qdq,
)
from qnnrepair.testing import example_inputs, tiny_conv_net  # noqa: E402

from .onnx_qdq_builder import (  # noqa: E402
    SigmoidNet,
    export_float,
    ops_net,
    ort_run,
    quantize_qdq,
)

LOGIT_TOL = 1e-5
EXACT_SHARE = 0.98
FLIP_STEPS = 2
FUSED_STEPS = 4
SHARED = Path(__file__).resolve().parents[2].parent / "shared"

NETS = {"ops": ops_net, "tiny": tiny_conv_net}
CASES = [("ops", False, False), ("ops", True, False), ("ops", True, True),
         ("tiny", False, False), ("tiny", True, True)]


def _ids(case) -> str:
    net, per_channel, unsigned = case
    return f"{net}-{'channel' if per_channel else 'tensor'}-{'u8' if unsigned else 's8'}"


@pytest.fixture(params=CASES, ids=_ids)
def pair(request, tmp_path) -> tuple[Path, Path]:
    net, per_channel, unsigned = request.param
    float_path = export_float(NETS[net](), tmp_path / f"{net}.onnx")
    qdq_path = quantize_qdq(float_path, tmp_path / f"{net}.qdq.onnx", per_channel,
                            example_inputs(64), unsigned)
    return float_path, qdq_path


def _images(n: int = 256) -> torch.Tensor:
    return example_inputs(n, seed=1) * 1.5  # past the calibration range: saturation is used


def _simulate(model, images) -> np.ndarray:
    with torch.no_grad():
        return model(images).numpy()


def _output_step(path: Path) -> float:
    """Scale of the graph output's DequantizeLinear: one step of the output grid."""
    proto = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    assert node.op_type == "DequantizeLinear"
    return float(init[node.input[1]])


# --- reading and simulating -------------------------------------------------------------------


def assert_follows_ort(got: np.ndarray, want: np.ndarray, qdq_path: Path, fused: bool,
                       what: str) -> None:
    """The comparisons the module docstring describes (`fused`: ORT with optimizations)."""
    tol = (FUSED_STEPS if fused else FLIP_STEPS) * _output_step(qdq_path)
    rows = np.abs(got - want).max(axis=1)
    top2 = np.sort(got, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= 2 * tol
    disagree = got.argmax(1) != want.argmax(1)
    exact = (rows <= LOGIT_TOL).mean()
    print(f"{what}: max |logit diff| {rows.max():.2e} (tolerance {tol:.2e}), {exact:.1%} of "
          f"{len(rows)} inputs exact, {disagree.sum()} top-1 differ, {near_tie.sum()} near ties")
    assert rows.max() <= tol
    assert fused or exact >= EXACT_SHARE
    assert not (disagree & ~near_tie).any()


def test_simulation_matches_ort_as_written(pair):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path)
    images = _images()
    assert_follows_ort(_simulate(model.model, images), ort_run(qdq_path, images, "disable"),
                       qdq_path, False, f"{qdq_path.name} vs ORT (no optimizations)")


def test_simulation_follows_fused_ort(pair):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path)
    images = _images()
    assert_follows_ort(_simulate(model.model, images), ort_run(qdq_path, images, "all"),
                       qdq_path, True, f"{qdq_path.name} vs ORT (fused)")


def test_float32_path_gives_the_float64_paths_bits(pair, monkeypatch):
    """Evaluation accumulates in float32 when the sums are exact there (channels-last, 1x1
    convolutions as matrix products); forced onto the float64 path, every output is the same."""
    model = load_onnx_qdq(*pair).model
    images = _images(64)
    fast = _simulate(model, images)
    monkeypatch.setattr(DeployedLayer, "float32_exact", lambda self: False)
    monkeypatch.setattr(model, "channels_last", False)
    np.testing.assert_array_equal(fast, _simulate(model, images))


def test_float_reference_is_the_float_file(pair):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path)
    images = _images(64)
    diff = np.abs(_simulate(model.float_model, images) - ort_run(float_path, images)).max()
    print(f"{float_path.name}: float reference vs ORT, max |diff| {diff:.2e}")
    assert diff <= LOGIT_TOL
    gap = np.abs(_simulate(model.float_model, images) - _simulate(model.model, images)).max()
    assert gap > 0, "the float reference must not be the quantized model"


def test_layers_expose_the_files_integers(pair):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path)
    proto = onnx.load(str(qdq_path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    n_weighted = sum(n.op_type in ("Conv", "Gemm") for n in proto.graph.node)
    assert len(model.layers) == n_weighted
    assert isinstance(model.layer(model.layers[-1]), QDQLinear)
    for name in model.layers:
        layer = model.layer(name)
        assert isinstance(layer, (QDQConv2d, QDQLinear))
        assert isinstance(model.float_layer(name), (torch.nn.Conv2d, torch.nn.Linear))
        stored = init[layer.weight_initializer].astype(np.int64)
        if layer.weight_transposed:
            stored = stored.T
        shape = (-1,) + (1,) * (stored.ndim - 1)
        centred = stored - layer.weight_zero_point.numpy().reshape(shape)
        np.testing.assert_array_equal(layer.weight_int.numpy(), centred)
        np.testing.assert_array_equal(layer.bias_int.numpy(), init[layer.bias_initializer])
        assert layer.qmin <= int(layer.weight_int.min()) <= int(layer.weight_int.max()) \
            <= layer.qmax
        # quantize_input is the identity on the values the DequantizeLinear in front hands on
        z = int(layer.input_zero_point)
        grid = torch.tensor([layer.act_qmin, layer.act_qmin + 1, z, layer.act_qmax]).float()
        x = (grid - z) * layer.input_scale
        assert torch.allclose(layer.quantize_input(x), x)
    first = model.layer(model.layers[0])
    if first.weight_zero_point.any():  # uint8 weights: an asymmetric grid
        assert first.qmin != -first.qmax
    else:
        assert first.qmin == -first.qmax == -127
    state = model.integer_state()
    copy = model.copy()
    copy.layer(model.layers[0]).weight_int.zero_()
    assert torch.equal(model.integer_state()[f"{model.layers[0]}.weight_int"],
                       state[f"{model.layers[0]}.weight_int"])


def test_depthwise_and_uneven_pad_are_read():
    """OpsNet's depthwise conv keeps groups; F.pad (0, 1, 0, 1) becomes a Pad node."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        f = export_float(ops_net(), Path(folder) / "ops.onnx")
        q = quantize_qdq(f, Path(folder) / "ops.qdq.onnx", True, example_inputs(64))
        model = load_onnx_qdq(f, q)
    dw = next(model.layer(n) for n in model.layers if model.layer(n).groups > 1)
    assert dw.groups == 8 and tuple(dw.weight_int.shape) == (8, 1, 3, 3)
    assert any(type(m).__name__ == "Pad" for m in model.model.nodes.values())


# --- bad input --------------------------------------------------------------------------------


def _assert_one_line_error(call, match: str, folder: Path, files: list[Path]) -> None:
    before = {p: p.read_bytes() for p in files}
    listing = sorted(folder.iterdir())
    with pytest.raises(QnnRepairError, match=match) as info:
        call()
    print(info.value)
    assert "\n" not in str(info.value)
    assert sorted(folder.iterdir()) == listing, "something was written"
    assert all(p.read_bytes() == b for p, b in before.items()), "an input changed"


@pytest.fixture
def tiny_pair(tmp_path) -> tuple[Path, Path]:
    f = export_float(tiny_conv_net(), tmp_path / "tiny.onnx")
    return f, quantize_qdq(f, tmp_path / "tiny.qdq.onnx", True, example_inputs(64))


def test_float_model_as_qdq_is_refused(tiny_pair, tmp_path):
    f, q = tiny_pair
    _assert_one_line_error(lambda: load_onnx_qdq(f, f), "float model", tmp_path, [f, q])
    _assert_one_line_error(lambda: load_onnx_qdq(q, q), "holds QuantizeLinear", tmp_path, [q])


def test_unsupported_op_is_named(tmp_path):
    f = export_float(SigmoidNet(), tmp_path / "sigmoid.onnx")
    q = quantize_qdq(f, tmp_path / "sigmoid.qdq.onnx", False, example_inputs(32))
    _assert_one_line_error(lambda: load_onnx_qdq(f, q), "Sigmoid", tmp_path, [f, q])


def test_float_model_with_other_weights_is_refused(tiny_pair, tmp_path):
    f, q = tiny_pair
    other = export_float(tiny_conv_net(seed=1), tmp_path / "other.onnx")
    _assert_one_line_error(lambda: load_onnx_qdq(other, q), "does not match.*half a step",
                           tmp_path, [f, q, other])


def test_float_model_of_another_graph_is_refused(tiny_pair, tmp_path):
    f, q = tiny_pair
    other = export_float(ops_net(), tmp_path / "ops.onnx")
    _assert_one_line_error(lambda: load_onnx_qdq(other, q), "does not match", tmp_path,
                           [f, q, other])


@pytest.mark.parametrize("keep", [0, 10, 0.5, 0.97])
@pytest.mark.parametrize("which", ["qdq", "float"])
def test_truncated_file_is_refused(tiny_pair, tmp_path, keep, which):
    f, q = tiny_pair
    source = q if which == "qdq" else f
    data = source.read_bytes()
    cut = tmp_path / f"cut_{which}.onnx"
    cut.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    args = (f, cut) if which == "qdq" else (cut, q)
    _assert_one_line_error(lambda: load_onnx_qdq(*args), "truncated|not an ONNX", tmp_path,
                           [f, q, cut])


# --- writing ----------------------------------------------------------------------------------


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _without_initializers(path: Path) -> bytes:
    proto = onnx.load(str(path))
    del proto.graph.initializer[:]
    return proto.SerializeToString()


def test_round_trip_without_change_keeps_every_initializer(pair, tmp_path):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path)
    out = tmp_path / "same.onnx"
    before = qdq_path.read_bytes()
    assert write_qdq(qdq_path, model, out) == []
    a, b = _initializers(qdq_path), _initializers(out)
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    assert _without_initializers(out) == _without_initializers(qdq_path)
    assert qdq_path.read_bytes() == before


def test_changed_integers_reach_ort_and_only_their_initializers(pair, tmp_path):
    float_path, qdq_path = pair
    model = load_onnx_qdq(float_path, qdq_path).copy()
    head = model.layer(model.layers[-1])
    head.weight_int[1] = torch.clamp(head.weight_int[1] + 30, head.qmin, head.qmax)
    head.bias_int[1] += int(0.5 / float(head.bias_scale()[1]))  # +0.5 on logit 1
    conv = model.layer(model.layers[0])
    conv.weight_int[0, 0, 0, 0] = conv.qmin  # the grid's edge must still fit the stored type
    out = tmp_path / "changed.onnx"
    changed = write_qdq(qdq_path, model, out)
    targets = {head.weight_initializer, head.bias_initializer, conv.weight_initializer}
    assert set(changed) == targets
    a, b = _initializers(qdq_path), _initializers(out)
    differ = {k for k in a if not np.array_equal(a[k], b[k])}
    assert differ == targets, f"initializers changed beyond the layers': {differ - targets}"
    assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in a)
    assert _without_initializers(out) == _without_initializers(qdq_path)

    images = _images()
    want = ort_run(out, images, "disable")
    assert not np.array_equal(want, ort_run(qdq_path, images, "disable"))
    assert_follows_ort(_simulate(model.model, images), want, qdq_path, False,
                       f"{qdq_path.name} after the change vs ORT (no optimizations)")
    reread = load_onnx_qdq(float_path, out)
    for name in model.layers:
        assert torch.equal(reread.layer(name).weight_int, model.layer(name).weight_int)
        assert torch.equal(reread.layer(name).bias_int, model.layer(name).bias_int)


def test_writer_refuses_off_grid_float_and_in_place(tiny_pair, tmp_path):
    f, q = tiny_pair
    model = load_onnx_qdq(f, q)
    _assert_one_line_error(lambda: write_qdq(q, model, q), "original", tmp_path, [f, q])
    _assert_one_line_error(lambda: write_qdq(q, model.float_model, tmp_path / "o.onnx"),
                           "float", tmp_path, [f, q])
    layer = model.layer(model.layers[0])
    layer.weight_int[0, 0, 0, 0] = 200
    _assert_one_line_error(lambda: write_qdq(q, model, tmp_path / "o.onnx"), "do not fit",
                           tmp_path, [f, q])


# --- the shared ResNet-20 (slow) --------------------------------------------------------------

RESNET = SHARED / "models" / "cifar10-resnet20.th"
CIFAR = SHARED / "data" / "cifar10"


@pytest.mark.slow
@pytest.mark.skipif(not (RESNET.is_file() and (CIFAR / "test.npz").is_file()),
                    reason=f"shared ResNet-20 or CIFAR-10 not found under {SHARED}")
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_resnet20_agrees_with_ort_before_and_after_a_change(tmp_path, per_channel):
    from qnnrepair.data import load_dataset, to_tensor
    from qnnrepair.models import load_model, model_info

    info = model_info("resnet20")
    calibration = to_tensor(load_dataset(CIFAR / "train30k.npz").images[:128], info.mean,
                            info.std)
    test = load_dataset(CIFAR / "test.npz", split="test")
    images = to_tensor(test.images[:500], info.mean, info.std)
    net = load_model("resnet20", RESNET)
    f = tmp_path / "resnet20.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (images[:1],), str(f), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    q = quantize_qdq(f, tmp_path / "resnet20.qdq.onnx", per_channel, calibration)
    model = load_onnx_qdq(f, q)
    assert len(model.layers) == 20
    head = model.layer(model.layers[-1])
    head.bias_int[3] += int(1.0 / float(head.bias_scale()[3]))  # class 3 gets +1 logit
    out = tmp_path / "changed.onnx"
    write_qdq(q, model, out)
    for what, path in (("as quantized", q), ("after the change", out)):
        sim = _simulate(load_onnx_qdq(f, path).model, images)
        ort = ort_run(path, images, "disable")
        agree = (sim.argmax(1) == ort.argmax(1)).mean()
        print(f"ResNet-20 ({'per channel' if per_channel else 'per tensor'}) {what}: top-1 "
              f"agreement with ORT {agree:.2%} on {len(images)} test images")
        assert agree >= 0.995


# --- the check against ONNX Runtime, and graphs as torch.onnx writes them --------------------


def test_simulation_passes_its_check_against_ort(pair):
    from qnnrepair.formats.onnx_qdq.check import check_against_runtime

    model = load_onnx_qdq(*pair)
    check_against_runtime(pair[0], model.float_model, _images(4), quantized=False)
    check_against_runtime(pair[1], model.model, _images(4), quantized=True)


def test_check_names_the_first_node_the_simulation_gets_wrong(tiny_pair):
    from qnnrepair.formats.onnx_qdq.check import check_against_runtime

    model = load_onnx_qdq(*tiny_pair)
    layer = model.model.get_submodule(model.layers[0])
    layer.padding = (0, 0)  # a misread graph: the first conv without its padding
    with pytest.raises(QnnRepairError, match=f"node {layer.node_name!r} computes shape"):
        check_against_runtime(tiny_pair[1], model.model, _images(2), quantized=True)


class SharedBias(torch.nn.Module):
    """Two convolutions with equal biases: torch.onnx stores the bias once and feeds the
    second conv through an Identity; quantize_static quantizes it on the first conv's grid."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.b.weight.mul_(3.0)  # another weight scale: the shared bias is off its grid
            self.b.bias.copy_(self.a.bias)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def test_a_bias_shared_between_layers_is_simulated_and_kept(tmp_path):
    from qnnrepair.formats.onnx_qdq.check import check_against_runtime

    float_path = export_float(SharedBias().eval(), tmp_path / "shared.onnx")
    proto = onnx.load(str(float_path))
    assert any(n.op_type == "Identity" for n in proto.graph.node)  # the exporter's sharing
    qdq_path = quantize_qdq(float_path, tmp_path / "shared.qdq.onnx", False, example_inputs(64))
    model = load_onnx_qdq(float_path, qdq_path)
    check_against_runtime(qdq_path, model.model, _images(4), quantized=True)
    layers = [model.model.get_submodule(n) for n in model.layers]
    assert [layer.bias_fixed for layer in layers[:2]] == [True, True]
    assert not all(layer.bias_on_grid for layer in layers[:2])


def test_the_guard_scores_a_qdq_candidate_in_onnx_runtime(tiny_pair, tmp_path):
    """The guard runs a changed QDQ graph in ONNX Runtime (default optimizations) from its
    file with the candidate's integers: the logits ORT gives for the same file written out."""
    from qnnrepair.repair.acceptance import Guard

    float_path, qdq_path = tiny_pair
    model = load_onnx_qdq(float_path, qdq_path)
    images = _images(64)
    labels = torch.zeros(len(images), dtype=torch.int64)
    guard = Guard(model.float_model, images, labels)
    guard.run_like(model.model)
    assert guard.runtime is not None and guard.prefix is None
    candidate = model.copy()
    head = candidate.layer(candidate.layers[-1])
    head.bias_int[0] += int(1.0 / float(head.bias_scale()[0]))  # +1 on logit 0
    out = tmp_path / "candidate.onnx"
    write_qdq(qdq_path, candidate, out)
    want = torch.from_numpy(ort_run(out, images, "all"))
    assert torch.equal(guard.runtime(candidate.model, images), want)
    assert not torch.equal(want, torch.from_numpy(ort_run(qdq_path, images, "all")))
    assert guard.score(candidate.model).accuracy == 100.0 * float((want.argmax(1) == 0).double()
                                                                  .mean())


def test_the_float_reference_is_not_scored_in_a_runtime(tiny_pair):
    from qnnrepair.formats.deployed import runtime_scorer

    model = load_onnx_qdq(*tiny_pair)
    assert runtime_scorer(model.model) is not None
    assert runtime_scorer(model.float_model) is None
