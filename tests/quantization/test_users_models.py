"""Models written the way torchvision, timm and efficientnet_pytorch write them: in-place
activations, shared activation modules, Conv2d subclasses with their own forward (TF "same"
padding, weight standardization), BatchNorm subclasses that apply their activation; and the
one-line refusals for what the quantizer cannot represent."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantConfig, load_quantized, quantize, save_quantized
from qnnrepair.quantization.checks import self_check
from qnnrepair.repair import RepairConfig, Repairer, preset
from qnnrepair.repair.engine import fit_localizer


def _spread(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Random BN statistics, and a last-layer bias that spreads predictions over classes."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(20)
        last.bias -= model(images).mean(0)
    return model


def torchvision_style(inplace: bool, shared: bool = False) -> nn.Module:
    """conv-bn-ReLU(inplace) twice, a residual `out += x`, as torchvision writes ResNets."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=inplace)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.relu2 = self.relu if shared else nn.ReLU(inplace=inplace)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(x))
            if inplace:
                out += x
            else:
                out = out + x
            out = self.relu2(out)
            return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    torch.manual_seed(0)
    return _spread(Net(), images())


def images(n: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def labels_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("metric", ["gradient", "ochiai"])
def test_in_place_activations_blame_as_the_out_of_place_model(metric):
    x = images()
    config = RepairConfig().replace(metric=metric)
    scores = []
    for inplace in (False, True):
        net = torchvision_style(inplace)
        qmodel = quantize(net, QuantConfig.from_setting("w4a8"), x)
        localizer = fit_localizer(qmodel, x, labels_of(net, x), config)
        scores.append(localizer.scores_)
    assert scores[0].keys() == scores[1].keys()
    for layer in scores[0]:
        np.testing.assert_allclose(scores[1][layer], scores[0][layer], rtol=1e-9, atol=1e-12)
    assert any(np.abs(s).sum() > 0 for s in scores[0].values())


def test_in_place_model_repairs_with_the_defaults_as_the_out_of_place_model():
    x, v = images(48, 0), images(48, 1)
    repaired = []
    for inplace in (False, True):
        net = torchvision_style(inplace)
        qmodel = quantize(net, QuantConfig.from_setting("w3a4"), x)
        repairer = Repairer(preset("default", max_neurons=4)).fit(
            qmodel, x, labels_of(net, x), v, labels_of(net, v))
        repaired.append(repairer.repaired_.integer_state())
    assert repaired[0].keys() == repaired[1].keys()
    for key in repaired[0]:
        assert torch.equal(repaired[0][key], repaired[1][key]), key


def test_a_shared_activation_module_is_fine():
    x = images()
    shared, own = torchvision_style(True, shared=True), torchvision_style(True)
    a = quantize(shared, QuantConfig.from_setting("w4a8"), x)
    b = quantize(own, QuantConfig.from_setting("w4a8"), x)
    ga = fit_localizer(a, x, labels_of(shared, x), RepairConfig()).scores_
    gb = fit_localizer(b, x, labels_of(own, x), RepairConfig()).scores_
    for layer in ga:
        np.testing.assert_allclose(ga[layer], gb[layer], rtol=1e-9, atol=1e-12)


class Conv2dStaticSamePadding(nn.Conv2d):
    """TensorFlow "same" padding in forward, as efficientnet_pytorch writes it (stride 2 pads
    0 before and 1 after on even inputs)."""

    def __init__(self, *args, image_size: int = 12, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ih = image_size
        kh, sh = self.weight.shape[-1], self.stride[0]
        oh = -(-ih // sh)
        pad = max((oh - 1) * sh + kh - ih, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class StdConv2d(nn.Conv2d):
    """Weight standardization in forward, as timm's StdConv2d."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the activation inside the BatchNorm's forward."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return F.relu6(x)


def efficientnet_style() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        Conv2dStaticSamePadding(3, 8, 3, stride=2, bias=False, image_size=12),
        BatchNormAct2d(8),
        Conv2dStaticSamePadding(8, 8, 3, stride=1, groups=8, bias=False, image_size=6),
        nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        StdConv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return _spread(net, images())


def test_same_padding_subclass_keeps_its_forward_and_float_top1():
    net, x = efficientnet_style(), images(64)
    qmodel = quantize(net, QuantConfig.from_setting("w8a8"), x[:32])
    assert qmodel.kernels.keys() == {"0", "2", "5"}
    assert "0.kernel" in qmodel.layers and ("0.kernel", "1") in qmodel.folded
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(qmodel.float_model(x), expected, rtol=1e-4, atol=1e-4)
        agree = (qmodel.model(x).argmax(1) == expected.argmax(1)).float().mean()
    assert agree >= 0.9


def test_standardized_weight_is_quantized_as_used():
    net, x = efficientnet_style(), images()
    qmodel = quantize(net, QuantConfig.from_setting("w8a8"), x)
    raw = net[5].weight.detach()
    used = (raw - raw.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(
        raw.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-6)
    kernel = qmodel.float_layer("5.kernel")
    torch.testing.assert_close(kernel.weight, used, rtol=1e-5, atol=1e-5)
    step = qmodel.layer("5.kernel").weight_scale.reshape(-1, 1, 1, 1)
    assert (qmodel.layer("5.kernel").dequantized_weight() - used).abs().max() <= step.max() / 2


def test_qnn_round_trip_keeps_wrapped_kernels_and_same_bytes(tmp_path):
    net, x = efficientnet_style(), images()
    qmodel = quantize(net, QuantConfig.from_setting("w4a8"), x,
                      model_spec="tests.quantization.test_users_models:efficientnet_style")
    save_quantized(qmodel, tmp_path / "a.qnn")
    save_quantized(qmodel, tmp_path / "b.qnn")
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("a.qnn", "b.qnn")]
    assert digest[0] == digest[1]
    loaded = load_quantized(tmp_path / "a.qnn")
    assert loaded.kernels == qmodel.kernels
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), qmodel.model(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.float_model(x), qmodel.float_model(x), rtol=0, atol=0)


# --- refusals ----------------------------------------------------------------------------------


class Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(self.conv(x).mean((2, 3)))
        return y, y


class Dict(Tuple):
    def forward(self, x):
        return {"logits": super().forward(x)[0]}


class NoLayers(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.conv2d(x, self.w).mean((2, 3)))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class InputWeight(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight * x.mean(), self.bias, self.stride, self.padding)


class Noisy(nn.Conv2d):
    def forward(self, x):
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return out + 0.1 * torch.randn_like(out)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x.flatten(2)).mean(2))


class Crashes(Tuple):
    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def _with_head(conv: nn.Module) -> nn.Module:
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("make, message", [
    (Tuple, "returns a tuple, not a tensor"),
    (Dict, "returns a dict, not a tensor"),
    (NoLayers, "no Conv2d or Linear layer"),
    (Functional, "module 'the model' (Functional) uses its weight in F.conv2d outside"),
    (Conv1dNet, "module 'conv' (Conv1d) uses its weight in F.conv1d"),
    (Crashes, "the model fails on images of shape (2, 3, 12, 12) (RuntimeError: mat1"),
    (Twice, "layer 'conv' (Conv2d) runs 2 times per forward pass"),
    (lambda: _with_head(InputWeight(3, 4, 3)), "'0' (InputWeight) computes its weight from its"),
    (lambda: _with_head(Noisy(3, 4, 3)), "'0' (Noisy): its forward cannot be reproduced"),
])
def test_unsupported_models_are_refused_in_one_line(make, message):
    torch.manual_seed(0)
    model = make().eval()
    x = images(4)
    with pytest.raises(QnnRepairError, match=message.replace("(", r"\(").replace(")", r"\)")) \
            as err:
        quantize(model, QuantConfig.from_setting("w8a8"), x)
    assert "\n" not in str(err.value)


def test_self_check_names_the_layer_whose_quantized_path_differs():
    net, x = torchvision_style(False), images()
    qmodel = quantize(net, QuantConfig.from_setting("w8a8"), x)
    self_check(net, qmodel.model, qmodel.float_model, qmodel.layers, x)  # passes as built
    qmodel.layer("conv2").padding = (0, 0)  # what geometry-only rebuilding got wrong
    with pytest.raises(QnnRepairError, match="layer 'conv2' of the quantized model computes"):
        self_check(net, qmodel.model, qmodel.float_model, qmodel.layers, x)


def test_the_users_model_is_left_as_it_was():
    net = torchvision_style(True).train()  # in train mode, BatchNorm would learn from a pass
    before = {k: v.clone() for k, v in net.state_dict().items()}
    quantize(net, QuantConfig.from_setting("w8a8"), images())
    assert net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
