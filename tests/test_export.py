"""ONNX QDQ export: the file holds the model's integers, and ONNX Runtime computes what the
simulation computes."""

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper

from qnnrepair.errors import QnnRepairError
from qnnrepair.export import check_onnx, export_onnx
from qnnrepair.quantization import QuantConfig, QuantConv2d, QuantLinear, quantize
from qnnrepair.testing import example_inputs, tiny_conv_net

# ORT and torch run the dequantized Conv/Gemm in float32 with different summation orders; on
# the tiny net that moves logits by ~1e-7 and flips no quantization level. A flipped level
# would show as a difference of about one input scale (>= 1e-3 here), far above this.
LOGIT_TOL = 1e-5
# (setting, first_last_bits): "w4a4/8" keeps the first and last layer at 8 bit (mixed graph);
# "w4a4" puts a Clip on every layer, the first one with a non-zero zero point (signed input).
SETTINGS = {"w8a8": ("w8a8", 8), "w4a4/8": ("w4a4", 8), "w4a4": ("w4a4", None)}


def _quantized(setting: str):
    name, first_last_bits = SETTINGS[setting]
    config = QuantConfig.from_setting(name, first_last_bits=first_last_bits)
    return quantize(tiny_conv_net(), config, example_inputs(64))


def _test_images() -> torch.Tensor:
    # Wider than the calibration images, so the saturation at both ends of each grid is used.
    return example_inputs(128, seed=1) * 1.5


class _Graph:
    def __init__(self, path):
        self.model = onnx.load(str(path))
        self.init = {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}
        self.init_type = {t.name: t.data_type for t in self.model.graph.initializer}
        self.producer = {o: n for n in self.model.graph.node for o in n.output}

    def nodes(self, *op_types):
        return [n for n in self.model.graph.node if n.op_type in op_types]

    def dequantized(self, value: str):
        """(initializer name, DequantizeLinear node) behind a Conv/Gemm operand."""
        node = self.producer[value]
        assert node.op_type == "DequantizeLinear", f"{value} comes from {node.op_type}"
        return node.input[0], node


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_graph_holds_the_integers_in_qdq_form(tmp_path, setting):
    qmodel = _quantized(setting)
    path = tmp_path / "model.onnx"
    export_onnx(qmodel, path, example_inputs(2))
    graph = _Graph(path)
    assert int(qmodel.layer("conv1").input_zero_point) > 0  # the signed input needs one
    layers = graph.nodes("Conv", "Gemm")
    assert [n.op_type for n in layers] == ["Conv", "Conv", "Gemm"]
    assert len(graph.nodes("QuantizeLinear")) == len(qmodel.layers)
    for name, node in zip(qmodel.layers, layers):
        layer = qmodel.layer(name)
        # Input: [Clip] -> QuantizeLinear(uint8) -> DequantizeLinear.
        x_init, _ = graph.dequantized(node.input[0])
        quant = graph.producer[x_init]
        assert quant.op_type == "QuantizeLinear"
        zp_name = quant.input[2]
        assert graph.init_type[zp_name] == onnx.TensorProto.UINT8
        assert int(graph.init[zp_name]) == int(layer.input_zero_point)
        assert graph.init[quant.input[1]] == layer.input_scale.item()
        before = graph.producer.get(quant.input[0])
        if layer.act_bits < 8:
            assert before is not None and before.op_type == "Clip", f"{name}: no Clip"
            lo, hi = (float(graph.init[v]) for v in before.input[1:])
            s, zp = layer.input_scale.item(), int(layer.input_zero_point)
            assert lo == pytest.approx(-zp * s, rel=1e-6)
            assert hi == pytest.approx((2**layer.act_bits - 1 - zp) * s, rel=1e-6)
        else:
            assert before is None or before.op_type != "Clip", f"{name}: Clip at 8 bit"
        # Weight: int8 initializer equal to weight_int, per-channel scale on axis 0.
        w_name, w_dq = graph.dequantized(node.input[1])
        assert w_name == f"{name}.weight_int"
        assert graph.init_type[w_name] == onnx.TensorProto.INT8
        np.testing.assert_array_equal(graph.init[w_name], layer.weight_int.numpy())
        np.testing.assert_array_equal(graph.init[w_dq.input[1]], layer.weight_scale.numpy())
        assert _axis(w_dq) == 0 and not graph.init[w_dq.input[2]].any()
        # Bias: int32 initializer equal to bias_int, scale weight_scale * input_scale.
        b_name, b_dq = graph.dequantized(node.input[2])
        assert graph.init_type[b_name] == onnx.TensorProto.INT32
        np.testing.assert_array_equal(graph.init[b_name], layer.bias_int.numpy())
        np.testing.assert_array_equal(graph.init[b_dq.input[1]], layer.bias_scale().numpy())
        assert _axis(b_dq) == 0 and not graph.init[b_dq.input[2]].any()
    assert not graph.nodes("Identity"), "scales and zero points must be initializers"


@pytest.mark.parametrize("optimization", ["disable", "all"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_onnx_runtime_matches_simulation(tmp_path, setting, optimization):
    qmodel = _quantized(setting)
    path = tmp_path / "model.onnx"
    export_onnx(qmodel, path, example_inputs(2))
    images = _test_images()
    first = qmodel.layer("conv1")
    if first.act_bits < 8:  # the images must reach past both ends of the grid, or Clip is idle
        s, zp = first.input_scale.item(), int(first.input_zero_point)
        assert images.min() < -zp * s and images.max() > (2**first.act_bits - 1 - zp) * s
    labels = qmodel.model(images).argmax(dim=1)
    result = check_onnx(path, qmodel, images, labels, batch_size=50, optimization=optimization)
    print(f"{setting} ORT({optimization}): max |logit diff| {result['max_abs_logit_diff']:.2e} "
          f"(tolerance {LOGIT_TOL:.0e}), agreement {result['agreement']:.4f}")
    assert result["n_images"] == len(images)
    assert result["max_abs_logit_diff"] <= LOGIT_TOL, (
        f"max |logit diff| {result['max_abs_logit_diff']:.2e} > {LOGIT_TOL:.0e}")
    assert result["agreement"] == 1.0 and result["n_disagree"] == 0
    assert result["sim_accuracy"] == result["onnx_accuracy"] == 100.0


def test_repaired_integers_are_what_gets_exported(tmp_path):
    qmodel = _quantized("w8a8").copy()
    layer = qmodel.layer("linear")
    layer.weight_int[0, 0] = int(layer.weight_int[0, 0]) // 2 + 1
    layer.bias_int[1] += 12345
    path = tmp_path / "repaired.onnx"
    export_onnx(qmodel, path, example_inputs(2))
    graph = _Graph(path)
    np.testing.assert_array_equal(graph.init["linear.weight_int"], layer.weight_int.numpy())
    np.testing.assert_array_equal(graph.init["linear.bias_int"], layer.bias_int.numpy())
    result = check_onnx(path, qmodel, _test_images())
    print(f"repaired: max |logit diff| {result['max_abs_logit_diff']:.2e}")
    assert result["max_abs_logit_diff"] <= LOGIT_TOL and result["agreement"] == 1.0


class _SequenceNet(nn.Module):
    """A Linear applied to (N, T, F): exported as MatMul + Add, since Gemm takes matrices."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.linear = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (N, H*W, 4)
        return self.linear(h).mean(dim=1)


def test_linear_on_sequences_exports_as_matmul(tmp_path):
    torch.manual_seed(0)
    config = QuantConfig.from_setting("w4a4", first_last_bits=None)
    qmodel = quantize(_SequenceNet().eval(), config, example_inputs(32))
    path = tmp_path / "seq.onnx"
    export_onnx(qmodel, path, example_inputs(2))
    graph = _Graph(path)
    assert graph.nodes("MatMul") and not graph.nodes("Gemm")
    result = check_onnx(path, qmodel, _test_images())
    print(f"sequence net: max |logit diff| {result['max_abs_logit_diff']:.2e}")
    assert result["max_abs_logit_diff"] <= LOGIT_TOL and result["agreement"] == 1.0


def _assert_untouched(qmodel, before):
    assert all(isinstance(qmodel.layer(n), (QuantConv2d, QuantLinear)) for n in qmodel.layers)
    after = qmodel.integer_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_output_folder_is_a_one_line_error(tmp_path):
    qmodel = _quantized("w8a8")
    before = qmodel.integer_state()
    target = tmp_path / "missing" / "model.onnx"
    with pytest.raises(QnnRepairError, match="does not exist") as info:
        export_onnx(qmodel, target, example_inputs(2))
    assert "\n" not in str(info.value)
    assert not target.parent.exists()
    _assert_untouched(qmodel, before)


def test_failed_export_leaves_no_file_and_no_swapped_module(tmp_path):
    qmodel = _quantized("w8a8")
    before = qmodel.integer_state()
    wrong = torch.randn(2, 5, 8, 8)  # 5 channels for a 3-channel conv
    with pytest.raises(QnnRepairError, match="ONNX export failed") as info:
        export_onnx(qmodel, tmp_path / "model.onnx", wrong)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == [], "a partial or temporary file was left behind"
    _assert_untouched(qmodel, before)


@pytest.mark.parametrize("opset", [11, "17"])
def test_bad_opset_is_refused(tmp_path, opset):
    with pytest.raises(QnnRepairError, match="opset"):
        export_onnx(_quantized("w8a8"), tmp_path / "m.onnx", example_inputs(2), opset=opset)


def test_check_onnx_refuses_bad_input(tmp_path):
    qmodel = _quantized("w8a8")
    with pytest.raises(QnnRepairError, match="not found"):
        check_onnx(tmp_path / "absent.onnx", qmodel, example_inputs(4))
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, path, example_inputs(2))
    with pytest.raises(QnnRepairError, match="4 images but 3 labels"):
        check_onnx(path, qmodel, example_inputs(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(QnnRepairError, match="optimization"):
        check_onnx(path, qmodel, example_inputs(4), optimization="max")
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(QnnRepairError, match="cannot load"):
        check_onnx(not_onnx, qmodel, example_inputs(4))
