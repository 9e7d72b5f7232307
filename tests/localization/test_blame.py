"""Output blame (GradientBlame, CounterfactualBlame), the graded state rule and make_localizer.

The gradient blame is checked against central finite differences of the divergence, the
counterfactual against a hand-written forward pass that replaces one channel, and both for
streaming (batches of 7 = one batch), determinism and hooks left behind.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.errors import QnnRepairError
from qnnrepair.experimental import weight_gradients
from qnnrepair.localization import (
    CounterfactualBlame,
    GradedError,
    GradedSpectrumCounts,
    GradientBlame,
    RelativeError,
    RunningMoments,
    SpectrumCounts,
    SpectrumLocalizer,
    compute_scores,
    make_localizer,
    record_spectrum,
)
from qnnrepair.localization.blame import (
    _ClippedStraightThrough,
    _StraightThrough,
    kl_divergence,
)
from qnnrepair.quantization import QuantConfig, QuantConv2d, QuantLinear, quantize
from qnnrepair.testing import blob_data, trained_tiny_net

N_INPUTS = 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions are far slower with 2 intra-op threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """A trained TinyConvNet at W2A4 (first and last layer at 8 bits) and noisy blob data, on
    which 6 of the 40 inputs are skipped (F wrong) and 4 fail (F right, Q wrong)."""
    images, labels = blob_data(N_INPUTS, seed=3, noise=2.5)
    qmodel = quantize(trained_tiny_net(), QuantConfig.from_setting("w2a4"), images)
    return qmodel, images, labels


def batched(images, labels, size):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(images), size)]


def divergence_with(qmodel, images, layer, index, fraction):
    """KL(F || Q) summed over `images`, with channel `index` of `layer` moved `fraction` of the
    way from its quantized to its float output (1: replaced), written out for TinyConvNet."""
    fm, qm = qmodel.float_model, qmodel.model
    assert isinstance(qm.bn1, nn.Identity) and isinstance(qm.bn2, nn.Identity)  # BN folded

    def head(a2, model):
        return model.linear(F.adaptive_avg_pool2d(F.relu(a2), 1).flatten(1))

    with torch.no_grad():
        f1 = fm.conv1(images)
        f2 = fm.conv2(F.relu(f1))
        float_logits = head(f2, fm)
        floats = {"conv1": f1, "conv2": f2, "linear": float_logits}

        def moved(name, a):
            if name != layer:
                return a
            a = a.clone()
            if fraction == 1.0:  # exactly the float output (a + (f - a) can be off by an ulp)
                a[:, index] = floats[name][:, index]
            else:
                a[:, index] += fraction * (floats[name][:, index] - a[:, index])
            return a

        a1 = moved("conv1", qm.conv1(images))
        a2 = moved("conv2", qm.conv2(F.relu(a1)))
        logits = moved("linear", head(a2, qm))
    log_p = F.log_softmax(float_logits.double(), 1)
    log_q = F.log_softmax(logits.double(), 1)
    return float(F.kl_div(log_q, log_p, log_target=True, reduction="sum"))


# Central differences of a float32 network, D in float64, step EPS of the float-minus-quantized
# difference: truncation O(EPS^2) and float32 noise ~1e-7 / EPS, both well under 1 %.
EPS = 1e-2
GRADIENT_RTOL = 0.02


def test_gradient_matches_finite_differences(tiny, monkeypatch):
    """With the activation rounding made the identity, D is smooth and the straight-through
    gradient is the true one: g . (a_Q - a_F) * eps must equal the central difference of D when
    the neuron moves eps of the way to its float output."""
    monkeypatch.setattr("qnnrepair.quantization.modules.fake_quantize_activation",
                        lambda x, scale, zero_point, bits: x)
    qmodel, images, labels = tiny
    blame = GradientBlame().fit(qmodel.float_model, qmodel.model, qmodel.layers,
                                [(images, labels)])
    worst = 0.0
    for layer in qmodel.layers:
        scale = np.abs(blame.scores_[layer]).max()
        for index, predicted in enumerate(blame.scores_[layer]):
            drop = (divergence_with(qmodel, images, layer, index, -EPS)
                    - divergence_with(qmodel, images, layer, index, EPS)) / 2
            error = abs(drop - EPS * predicted) / (EPS * scale)
            print(f"{layer}[{index}] finite difference {drop:+.6e}, "
                  f"g.(aQ-aF)*eps {EPS * predicted:+.6e}, error {error:.2e}")
            worst = max(worst, error)
    assert worst <= GRADIENT_RTOL, f"worst relative error {worst:.3g} > {GRADIENT_RTOL}"


def test_weight_gradients_match_finite_differences(tiny, monkeypatch):
    """Scaling channel c's weight scale by (1 + eps) moves its weights and bias by eps * (W_c,
    b_c) (the bias grid is s_w * s_x): with the activation rounding made the identity, the
    central difference of D must equal eps * (gW_c . W_c + gb_c * b_c), on every layer (conv
    and linear) at the channel with the largest weight gradient."""
    monkeypatch.setattr("qnnrepair.quantization.modules.fake_quantize_activation",
                        lambda x, scale, zero_point, bits: x)
    qmodel, images, labels = tiny
    grads = weight_gradients(qmodel.float_model, qmodel.model, qmodel.layers,
                             batched(images, labels, 16))
    model = copy.deepcopy(qmodel.model)
    with torch.no_grad():
        float_logits = qmodel.float_model(images)

    def divergence(layer, c, factor):
        module = model.get_submodule(layer)
        kept = module.weight_scale[c].clone()
        module.weight_scale[c] = kept * factor
        with torch.no_grad():
            d = float(kl_divergence(float_logits, model(images)).sum())
        module.weight_scale[c] = kept
        return d

    for layer in qmodel.layers:
        module = model.get_submodule(layer)
        grad_w, grad_b = grads[layer]
        assert grad_w.shape == tuple(module.weight_int.shape)
        assert grad_b.shape == (module.out_features,)
        c = int(np.argmax(np.abs(grad_w.reshape(len(grad_w), -1)).sum(1)))
        weight = module.dequantized_weight()[c].double().numpy()
        bias = float(module.dequantized_bias()[c])
        predicted = EPS * (float((grad_w[c] * weight).sum()) + float(grad_b[c]) * bias)
        change = (divergence(layer, c, 1 + EPS) - divergence(layer, c, 1 - EPS)) / 2
        print(f"{layer}[{c}]: finite difference {change:+.6e}, predicted {predicted:+.6e}")
        assert change == pytest.approx(predicted, rel=GRADIENT_RTOL)


def test_gradient_flows_through_rounding(tiny):
    """With real rounding, the straight-through hooks keep the forward values bit for bit and
    the gradient reaches every layer (torch.round alone would give 0 before the last layer)."""
    qmodel, images, labels = tiny
    named = {k: qmodel.model.get_submodule(k) for k in qmodel.layers}
    with torch.no_grad():
        plain = qmodel.model(images)
    with _StraightThrough(qmodel.model, named) as run, torch.enable_grad():
        logits, outputs = run(images)
        grads = torch.autograd.grad(logits.square().sum(), list(outputs.values()))
    assert torch.equal(logits.detach(), plain)
    for layer, grad in zip(outputs, grads):
        print(f"{layer}: |grad| sum {float(grad.abs().sum()):.4g}")
        assert grad.abs().sum() > 0, f"no gradient reaches {layer}"
    blame = GradientBlame().fit(qmodel.float_model, qmodel.model, qmodel.layers,
                                [(images, labels)])
    assert all(np.abs(s).sum() > 0 for s in blame.scores_.values())


class _Float64Linear(QuantLinear):
    """A layer that computes in float64, as a deployed (TFLite) layer does."""

    def forward(self, x):
        return super().forward(x).double()


def _layer(kind: str):
    torch.manual_seed(0)
    if kind == "linear":
        layer, shape = QuantLinear(12, 5, 4, 4), (3, 12)
    elif kind == "float64 linear":
        layer, shape = _Float64Linear(12, 5, 4, 4), (3, 12)
    elif kind == "grouped conv":  # groups, stride, uneven padding, dilation
        layer, shape = QuantConv2d(6, 9, (3, 2), stride=2, padding=(1, 2), dilation=2,
                                   groups=3, weight_bits=4, act_bits=4), (2, 6, 9, 8)
    else:  # padding given as a word
        layer, shape = QuantConv2d(4, 4, (3, 3), padding="same", weight_bits=4,
                                   act_bits=4), (2, 4, 7, 7)
    layer.weight_int.copy_(torch.randint(-7, 8, layer.weight_int.shape))
    layer.weight_scale.copy_(torch.rand(layer.out_features) + 0.5)
    layer.input_scale.fill_(0.1)
    return layer, torch.randn(shape) * 0.6  # some of x beyond the 4-bit range [0, 1.5]


@pytest.mark.parametrize("kind", ["linear", "float64 linear", "grouped conv", "same padding"])
def test_straight_through_gradient_is_that_of_the_clipped_linear_part(kind):
    """The hook keeps a layer's output and gives x the gradient of W x_in, x_in = x where the
    input quantizer does not clamp and 0 where it does (the module docstring), computed here
    by autograd from that definition."""
    layer, x = _layer(kind)
    with torch.no_grad():
        out = layer(x)
        inside = (layer.quantize_input(x) - x).abs() <= 0.5 * layer.input_scale * (1 + 1e-4)
    assert 0 < inside.sum() < inside.numel(), "the case must clamp some inputs and not others"
    grad_out = torch.randn(out.shape, dtype=out.dtype)
    x_ref = x.clone().requires_grad_(True)
    weight = layer.dequantized_weight()
    if weight.dim() == 4:
        linear = F.conv2d(x_ref * inside, weight, None, layer.stride, layer.padding,
                          layer.dilation, layer.groups)
    else:
        linear = F.linear(x_ref * inside, weight)
    (expected,) = torch.autograd.grad(linear, x_ref, grad_out.to(linear.dtype))
    x_st = x.clone().requires_grad_(True)
    kept = _ClippedStraightThrough.apply(out, x_st, layer)
    assert torch.equal(kept.detach(), out)
    (got,) = torch.autograd.grad(kept, x_st, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


CF_ATOL = 1e-9  # same modules, same inputs: only the KL formula differs (float64)


def test_counterfactual_matches_its_definition(tiny):
    qmodel, images, labels = tiny
    blame = CounterfactualBlame().fit(qmodel.float_model, qmodel.model, qmodel.layers,
                                      [(images, labels)])
    base = divergence_with(qmodel, images, "linear", 0, 0.0)
    assert blame.divergence_ == pytest.approx(base, abs=CF_ATOL)
    for layer in qmodel.layers:
        index = int(np.argmax(np.abs(blame.scores_[layer])))
        expected = base - divergence_with(qmodel, images, layer, index, 1.0)
        got = blame.scores_[layer][index]
        print(f"{layer}[{index}]: counterfactual {got:+.9f}, brute force {expected:+.9f}")
        assert abs(got - expected) <= CF_ATOL


STREAM_RTOL = 1e-6  # float32 convolutions of different batch sizes differ in the last bits


@pytest.mark.parametrize("cls", [GradientBlame, CounterfactualBlame])
def test_streaming_equals_one_batch(tiny, cls):
    qmodel, images, labels = tiny
    args = (qmodel.float_model, qmodel.model, qmodel.layers)
    whole = cls().fit(*args, [(images, labels)])
    streamed = cls().fit(*args, batched(images, labels, 7))
    assert streamed.n_inputs_ == whole.n_inputs_ == N_INPUTS
    for layer in qmodel.layers:
        scale = np.abs(whole.scores_[layer]).max()
        error = np.abs(streamed.scores_[layer] - whole.scores_[layer]).max() / scale
        print(f"{cls.__name__} {layer}: max relative difference {error:.2e}")
        assert error <= STREAM_RTOL


@pytest.mark.parametrize("cls", [GradientBlame, CounterfactualBlame])
def test_same_inputs_same_scores(tiny, cls):
    qmodel, images, labels = tiny
    data = batched(images, labels, 16)
    args = (qmodel.float_model, qmodel.model, qmodel.layers, data)
    first, second = cls().fit(*args), cls().fit(*args)
    assert first.ranking_ == second.ranking_
    assert all(np.array_equal(first.scores_[k], second.scores_[k]) for k in qmodel.layers)
    assert len(first.ranking_) == sum(len(s) for s in first.scores_.values())


class Failing(nn.Module):
    """Wraps a model; its forward raises from the `fail_at`-th call on."""

    def __init__(self, inner: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("forward failed")
        return self.inner(x)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("cls", [GradientBlame, CounterfactualBlame])
@pytest.mark.parametrize("fail_at", [None, 1, 3])
def test_no_hook_left_behind(tiny, cls, fail_at):
    qmodel, images, labels = tiny
    quant = Failing(qmodel.model, fail_at or 10**9)
    float_model = Failing(qmodel.float_model, 10**9)
    layers = [f"inner.{k}" for k in qmodel.layers]
    before = hook_count(quant), hook_count(float_model)
    training = qmodel.model.training
    if fail_at is None:
        cls().fit(float_model, quant, layers, batched(images, labels, 16))
    else:
        with pytest.raises(RuntimeError, match="forward failed"):
            cls().fit(float_model, quant, layers, batched(images, labels, 16))
    assert (hook_count(quant), hook_count(float_model)) == before == (0, 0)
    assert qmodel.model.training == training


def test_blame_bad_input(tiny):
    qmodel, images, labels = tiny
    args = (qmodel.float_model, qmodel.model)
    with pytest.raises(QnnRepairError, match="unknown divergence"):
        GradientBlame(divergence="l2")
    with pytest.raises(QnnRepairError, match="no layer"):
        GradientBlame().fit(*args, ["conv9"], [(images, labels)])
    with pytest.raises(QnnRepairError, match="no batches"):
        CounterfactualBlame().fit(*args, qmodel.layers, [])
    assert repr(GradientBlame(absolute=True)) == "GradientBlame(divergence='kl', absolute=True)"


# --- graded SBFL ---------------------------------------------------------------------------------


def test_graded_error_degrees():
    a_float = torch.tensor([[0.0, 1.0], [2.0, -1.0], [4.0, 0.0]])  # stds: sqrt(8/3), sqrt(2/3)
    a_quant = a_float + torch.tensor([[0.5, 2.0], [0.0, 0.1], [-1.0, 0.0]])
    moments = RunningMoments()
    moments.update(a_float)
    stats = moments.result()
    std = np.array([np.sqrt(8 / 3), np.sqrt(2 / 3)])
    expected = np.minimum(1.0, np.abs((a_quant - a_float).numpy()) / (0.5 * std))
    got = GradedError(saturation=0.5).deviates(a_float, a_quant, stats)
    print(got)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    with pytest.raises(QnnRepairError, match="saturation"):
        GradedError(saturation=0)


def test_graded_counts():
    counts = GradedSpectrumCounts(np.array([0.5, 1.25]), np.array([1.0, 0.0]),
                                  np.array([1.5, 0.75]), np.array([2, 3]))
    assert counts.failed_deviating.dtype == np.float64
    assert repr(counts) == "GradedSpectrumCounts(n_neurons=2, n_failed=2, n_passed=3)"
    merged = SpectrumCounts.concatenate([SpectrumCounts.zeros(1), counts])
    assert isinstance(merged, GradedSpectrumCounts) and merged.n_neurons == 3
    # ochiai = ef / sqrt(F (ef + ep)) on fractional counts, by hand
    np.testing.assert_allclose(compute_scores("ochiai", counts),
                               [0.5 / np.sqrt(2 * 1.5), 1.25 / np.sqrt(2 * 1.25)], rtol=1e-12)
    with pytest.raises(QnnRepairError, match="integer"):
        SpectrumCounts(np.array([0.5]), np.zeros(1, int), np.zeros(1, int), np.zeros(1, int))
    with pytest.raises(QnnRepairError, match="finite"):
        GradedSpectrumCounts(np.array([np.inf]), np.zeros(1), np.zeros(1), np.zeros(1))


def test_graded_spectrum_sums_degrees(tiny):
    """ef of the graded rule = the sum over failing inputs of each neuron's degree; with a tiny
    saturation every nonzero error is a full deviation, so it reduces to RelativeError(0)."""
    qmodel, images, labels = tiny
    args = (qmodel.float_model, qmodel.model, qmodel.layers, batched(images, labels, 7))
    graded = record_spectrum(*args, state_rule=GradedError(saturation=1.0))
    for counts in graded.counts.values():
        assert isinstance(counts, GradedSpectrumCounts)
        np.testing.assert_allclose(counts.n_failed, graded.n_failed, rtol=1e-12)
        assert (counts.failed_deviating <= graded.n_failed + 1e-9).all()
    assert graded.n_failed > 0 and graded.n_passed > 0
    binary = record_spectrum(*args, state_rule=RelativeError(tau=0.0))
    saturated = record_spectrum(*args, state_rule=GradedError(saturation=1e-12))
    for layer in qmodel.layers:
        np.testing.assert_array_equal(saturated.counts[layer].failed_deviating,
                                      binary.counts[layer].failed_deviating)
        np.testing.assert_array_equal(saturated.counts[layer].passed_deviating,
                                      binary.counts[layer].passed_deviating)


# --- make_localizer ------------------------------------------------------------------------------


def test_make_localizer():
    sbfl = make_localizer("dstar", state_rule="graded_error", oracle="float", seed=3, star=3)
    assert isinstance(sbfl, SpectrumLocalizer)
    assert (sbfl.metric, sbfl.state_rule, sbfl.oracle, sbfl.seed) == (
        "dstar", "graded_error", "float", 3)
    assert sbfl.metric_params == {"star": 3}
    gradient = make_localizer("gradient", state_rule="relative_error", absolute=True)
    assert isinstance(gradient, GradientBlame) and gradient.absolute
    assert isinstance(make_localizer("counterfactual"), CounterfactualBlame)
    with pytest.raises(QnnRepairError, match="gradient"):
        make_localizer("gradiant")
    with pytest.raises(QnnRepairError, match="localizer 'counterfactual'"):
        make_localizer("counterfactual", star=2)
    with pytest.raises(QnnRepairError, match="no parameter"):
        make_localizer("ochiai", absolute=True)


def test_made_localizers_fit_alike(tiny):
    """Every kind of localizer, fitted through the factory, gives the same contract."""
    qmodel, images, labels = tiny
    data = batched(images, labels, 16)
    n_neurons = sum(qmodel.model.get_submodule(k).out_features for k in qmodel.layers)
    for name in ("ochiai", "random", "gradient", "counterfactual"):
        localizer = make_localizer(name).fit(qmodel.float_model, qmodel.model, qmodel.layers,
                                             data)
        assert list(localizer.scores_) == qmodel.layers
        assert all(s.dtype == np.float64 for s in localizer.scores_.values())
        assert len(set(localizer.ranking_)) == len(localizer.ranking_) == n_neurons


def test_every_localizer_keeps_the_localizer_contract():
    from qnnrepair.localization import Localizer, localizer_names, make_localizer
    from qnnrepair.quantization import QuantConfig, quantize
    from qnnrepair.testing import blob_data, trained_tiny_net

    model = trained_tiny_net()
    images, labels = blob_data(40, seed=3)
    qmodel = quantize(model, QuantConfig.from_setting("w3a4"), images)
    for name in localizer_names():
        localizer = make_localizer(name)
        assert isinstance(localizer, Localizer), name
        assert localizer.fit(qmodel.float_model, qmodel.model, ["conv1", "conv2"],
                             [(images, labels)]) is localizer
        assert set(localizer.scores_) == {"conv1", "conv2"}
        assert len(localizer.ranking_) == 6 + 8, name
