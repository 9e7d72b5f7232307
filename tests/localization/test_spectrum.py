"""Spectrum recording (hooks, streaming counts), neuron-state rules and SpectrumLocalizer.

The streamed counts are checked against a direct computation that holds every activation of a
small data set at once and applies the rules' formulas in numpy.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization import (
    STATE_RULES,
    ActivationFlip,
    FlipOrRelativeError,
    RelativeError,
    RunningMoments,
    SpectrumLocalizer,
    compute_scores,
    get_state_rule,
    rank_neurons,
    record_spectrum,
)
from qnnrepair.localization.states import STD_FLOOR_FRACTION


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions are ~1000x slower with 2 intra-op threads than with 1 on a busy 2-core
    machine (thread hand-off dominates), which made this file take 35 s instead of 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N_INPUTS = 40  # not a multiple of the batch size 3: the last batch is partial
BATCH_SIZE = 3


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    def pre_activations(self, x):
        a1 = self.fc1(x.flatten(1))
        return {"fc1": a1, "fc2": self.fc2(F.relu(a1))}


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 3 * 3, 3)

    def forward(self, x):
        return self.pre_activations(x)["fc"]

    def pre_activations(self, x):
        a1 = self.conv1(x)
        a2 = self.conv2(F.relu(a1))
        return {"conv1": a1, "conv2": a2, "fc": self.fc(F.relu(a2).flatten(1))}


def make_pair(kind: str, seed: int = 0):
    """A float64 model and a "quantized" copy: weights rounded to a coarse 3-bit-like grid."""
    torch.manual_seed(seed)
    model = (MLP() if kind == "mlp" else ConvNet()).double().eval()
    quant = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in quant.parameters():
            step = parameter.abs().max() / 3
            parameter.copy_(torch.round(parameter / step) * step)
    return model, quant


def make_data(kind: str, model: nn.Module, seed: int = 1):
    """Inputs with labels equal to the float prediction, except every fourth input, whose label
    the float model gets wrong (so it must be skipped)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (N_INPUTS, 6) if kind == "mlp" else (N_INPUTS, 2, 5, 5)
    images = torch.randn(*shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::4] = (labels[::4] + 1) % 3
    return images, labels


def batched(images, labels, size=BATCH_SIZE):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(images), size)]


def reference_spectrum(model, quant, images, labels, rule, oracle="label"):
    """All activations at once, the rules' formulas in numpy, the counts by direct sums."""
    with torch.no_grad():
        acts_f = {k: v.numpy() for k, v in model.pre_activations(images).items()}
        acts_q = {k: v.numpy() for k, v in quant.pre_activations(images).items()}
    pred_f = model(images).argmax(1).numpy()
    pred_q = quant(images).argmax(1).numpy()
    target = labels.numpy() if oracle == "label" else pred_f
    passing = pred_q == target
    failing = (pred_q != target) & (pred_f == target)
    counts, deviations = {}, {}
    for layer, a_f in acts_f.items():
        a_q = acts_q[layer]
        a_f = a_f.reshape(a_f.shape[0], a_f.shape[1], -1)  # (N, C, positions)
        a_q = a_q.reshape(a_f.shape)
        std = a_f.transpose(1, 0, 2).reshape(a_f.shape[1], -1).std(axis=1)
        std = np.maximum(std, STD_FLOOR_FRACTION * std.mean())
        relative = np.abs(a_q - a_f).mean(axis=2) > getattr(rule, "tau", 0) * std
        flip = ((a_f > 0) != (a_q > 0)).mean(axis=2) > getattr(rule, "rho", 0)
        deviating = {"relative_error": relative, "activation_flip": flip}.get(
            rule.name, relative | flip
        )
        deviations[layer] = deviating
        counts[layer] = (
            deviating[failing].sum(0),
            deviating[passing].sum(0),
            (~deviating)[failing].sum(0),
            (~deviating)[passing].sum(0),
        )
    return counts, (int(passing.sum()), int(failing.sum())), deviations


RULES = [RelativeError(), ActivationFlip(), FlipOrRelativeError(), RelativeError(tau=0.5)]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_streamed_counts_match_all_at_once(kind, rule):
    model, quant = make_pair(kind)
    images, labels = make_data(kind, model)
    layers = list(model.pre_activations(images[:1]))
    spectrum = record_spectrum(model, quant, layers, batched(images, labels), state_rule=rule)
    expected, (n_passed, n_failed), deviations = reference_spectrum(
        model, quant, images, labels, rule
    )
    print(spectrum, {k: float(v.mean()) for k, v in deviations.items()})
    assert spectrum.layers == layers
    assert (spectrum.n_passed, spectrum.n_failed) == (n_passed, n_failed)
    assert spectrum.n_skipped == N_INPUTS - n_passed - n_failed
    # The data must exercise every outcome, or the comparison proves little.
    assert n_passed > 0 and n_failed > 0 and spectrum.n_skipped > 0
    assert any(0 < d.mean() < 1 for d in deviations.values()), "no layer has mixed states"
    for layer in layers:
        got = spectrum.counts[layer]
        ef, ep, nf, np_ = expected[layer]
        assert got.failed_deviating.tolist() == ef.tolist(), layer
        assert got.passed_deviating.tolist() == ep.tolist(), layer
        assert got.failed_not_deviating.tolist() == nf.tolist(), layer
        assert got.passed_not_deviating.tolist() == np_.tolist(), layer
        assert (got.n_failed == n_failed).all() and (got.n_passed == n_passed).all()


def test_batch_size_does_not_change_the_spectrum():
    model, quant = make_pair("conv")
    images, labels = make_data("conv", model)
    layers = ["conv1", "conv2", "fc"]
    one_batch = record_spectrum(model, quant, layers, [(images, labels)])
    loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH_SIZE)
    streamed = record_spectrum(model, quant, layers, loader)
    assert one_batch.counts == streamed.counts
    assert (one_batch.n_passed, one_batch.n_failed, one_batch.n_skipped) == (
        streamed.n_passed,
        streamed.n_failed,
        streamed.n_skipped,
    )


def test_inputs_the_float_model_gets_wrong_are_skipped():
    model, quant = make_pair("mlp")
    images, _ = make_data("mlp", model)
    with torch.no_grad():
        wrong = (model(images).argmax(1) + 1) % 3  # every label contradicts the float model
    spectrum = record_spectrum(model, quant, ["fc1"], batched(images, wrong))
    with torch.no_grad():
        quant_right = int((quant(images).argmax(1) == wrong).sum())
    # Q may still hit the wrong label by chance: those inputs count as passing.
    assert (spectrum.n_failed, spectrum.n_passed) == (0, quant_right)
    assert spectrum.n_skipped == N_INPUTS - quant_right
    counts = spectrum.counts["fc1"]
    assert counts.failed_deviating.sum() == 0 and counts.failed_not_deviating.sum() == 0


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_float_oracle_replaces_the_labels(kind):
    model, quant = make_pair(kind)
    images, labels = make_data(kind, model)
    noise = torch.randint(0, 3, labels.shape, generator=torch.Generator().manual_seed(5))
    layers = list(model.pre_activations(images[:1]))
    rule = FlipOrRelativeError()
    spectrum = record_spectrum(
        model, quant, layers, batched(images, noise), oracle="float", state_rule=rule
    )
    expected, (n_passed, n_failed), _ = reference_spectrum(
        model, quant, images, labels, rule, oracle="float"
    )
    assert spectrum.n_skipped == 0  # F always agrees with itself
    assert (spectrum.n_passed, spectrum.n_failed) == (n_passed, n_failed)
    assert n_failed > 0
    for layer in layers:
        assert spectrum.counts[layer].failed_deviating.tolist() == expected[layer][0].tolist()
        assert spectrum.counts[layer].passed_deviating.tolist() == expected[layer][1].tolist()
    assert spectrum.oracle == "float"


def test_same_model_twice_has_no_failures_and_no_deviations():
    model, _ = make_pair("conv")
    images, labels = make_data("conv", model)
    spectrum = record_spectrum(
        model, model, ["conv1", "fc"], batched(images, labels), state_rule="either"
    )
    assert spectrum.n_failed == 0
    assert spectrum.n_skipped == N_INPUTS // 4  # exactly the inputs whose label F gets wrong
    for counts in spectrum.counts.values():
        assert counts.failed_deviating.sum() == 0 and counts.passed_deviating.sum() == 0


def _all_hooks(*models):
    return [
        (name, hooks)
        for model in models
        for name, module in model.named_modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks)
        if hooks
    ]


class ExplodingBatches:
    """Re-iterable; raises after `good` batches."""

    def __init__(self, batches, good):
        self.batches, self.good = batches, good

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == self.good:
                raise RuntimeError("batch source failed")
            yield batch


@pytest.mark.parametrize("rule", ["relative_error", "activation_flip"])
def test_no_hook_left_behind_after_an_exception(rule):
    model, quant = make_pair("conv")
    images, labels = make_data("conv", model)
    model.train()  # the recorder switches to eval and must switch back
    batches = ExplodingBatches(batched(images, labels), good=2)
    with pytest.raises(RuntimeError, match="batch source failed"):
        record_spectrum(model, quant, ["conv1", "conv2", "fc"], batches, state_rule=rule)
    assert _all_hooks(model, quant) == []
    assert all(m.training for m in model.modules())
    assert not any(m.training for m in quant.modules())


def test_no_hook_left_behind_after_a_failing_forward():
    model, quant = make_pair("mlp")
    images, labels = make_data("mlp", model)
    calls = []

    def explode(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("forward failed")

    user_hook = quant.fc2.register_forward_hook(explode)  # the user's own hook must survive
    with pytest.raises(RuntimeError, match="forward failed"):
        record_spectrum(model, quant, ["fc1", "fc2"], batched(images, labels))
    assert _all_hooks(model) == []
    assert list(quant.fc2._forward_hooks.values()) == [explode]
    assert quant.fc1._forward_hooks == {}
    user_hook.remove()


def test_no_hook_left_behind_after_success():
    model, quant = make_pair("mlp")
    images, labels = make_data("mlp", model)
    record_spectrum(model, quant, ["fc1", "fc2"], batched(images, labels), show_progress=True)
    assert _all_hooks(model, quant) == []


def test_unknown_layer_is_a_one_line_error_listing_valid_names():
    model, quant = make_pair("conv")
    images, labels = make_data("conv", model)
    with pytest.raises(QnnRepairError) as info:
        record_spectrum(model, quant, ["conv1", "conv9"], batched(images, labels))
    message = str(info.value)
    assert "\n" not in message
    assert "'conv9'" in message and "conv1" in message and "fc" in message
    assert _all_hooks(model, quant) == []


def test_input_errors():
    model, quant = make_pair("mlp")
    images, labels = make_data("mlp", model)
    batches = batched(images, labels)
    with pytest.raises(QnnRepairError, match="oracle"):
        record_spectrum(model, quant, ["fc1"], batches, oracle="labels")
    with pytest.raises(QnnRepairError, match="no layers"):
        record_spectrum(model, quant, [], batches)
    with pytest.raises(QnnRepairError, match="more than once"):
        record_spectrum(model, quant, ["fc1", "fc1"], batches)
    with pytest.raises(QnnRepairError, match="no batches"):
        record_spectrum(model, quant, ["fc1"], [], state_rule="activation_flip")
    with pytest.raises(QnnRepairError, match="pair"):
        record_spectrum(model, quant, ["fc1"], [images], state_rule="activation_flip")
    with pytest.raises(QnnRepairError, match="labels must be integers"):
        record_spectrum(model, quant, ["fc1"], [(images, labels.double())])


def test_one_shot_iterator_needs_a_rule_without_statistics():
    model, quant = make_pair("mlp")
    images, labels = make_data("mlp", model)
    with pytest.raises(QnnRepairError, match="reads the batches twice"):
        record_spectrum(model, quant, ["fc1"], iter(batched(images, labels)))
    from_generator = record_spectrum(
        model, quant, ["fc1"], iter(batched(images, labels)), state_rule="activation_flip"
    )
    from_list = record_spectrum(
        model, quant, ["fc1"], batched(images, labels), state_rule="activation_flip"
    )
    assert from_generator.counts == from_list.counts


# --- state rules ------------------------------------------------------------------------------


def test_running_moments_match_numpy():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(b, 3, 4, 4, generator=generator) * 5 + 100 for b in (1, 3, 7)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    values = torch.cat(batches).double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    stats = moments.result()
    assert stats.count == 11 * 16
    error = max(
        np.abs(stats.mean.numpy() - values.mean(1)).max(),
        np.abs(stats.std.numpy() - values.std(1)).max(),
    )
    assert error <= 1e-9, f"moments differ from numpy by {error}"


def test_relative_error_by_hand():
    stats = RunningMoments()
    stats.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))  # std 1 and 10
    a_float = torch.tensor([[1.0, 20.0], [1.0, 20.0]])
    a_quant = torch.tensor([[1.05, 20.5], [1.2, 22.0]])
    # errors [[0.05, 0.5], [0.2, 2.0]] against tau * std = [0.1, 1.0]
    got = RelativeError(tau=0.1).deviates(a_float, a_quant, stats.result())
    assert got.tolist() == [[False, False], [True, True]]


def test_relative_error_averages_over_positions():
    stats = RunningMoments()
    stats.update(torch.tensor([[[0.0, 2.0]]]))  # one channel, std 1
    a_float = torch.zeros(1, 1, 2, 2)
    a_quant = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]])  # mean |error| 0.125 (exact in binary)
    assert RelativeError(tau=0.12).deviates(a_float, a_quant, stats.result()).tolist() == [[True]]
    assert RelativeError(tau=0.125).deviates(a_float, a_quant, stats.result()).tolist() == [[False]]


def test_activation_flip_by_hand():
    a_float = torch.tensor([[1.0, -1.0, 0.5]])
    a_quant = torch.tensor([[0.2, 0.1, 0.0]])  # on/on, off/on, on/off (0 is off)
    assert ActivationFlip().deviates(a_float, a_quant).tolist() == [[False, True, True]]
    conv_float = torch.ones(1, 1, 2, 2)
    conv_quant = torch.tensor([[[[-1.0, 1.0], [1.0, 1.0]]]])  # 1 of 4 positions flips
    assert ActivationFlip(rho=0.2).deviates(conv_float, conv_quant, None).tolist() == [[True]]
    assert ActivationFlip(rho=0.25).deviates(conv_float, conv_quant, None).tolist() == [[False]]


def test_either_is_flip_or_relative_error():
    stats = RunningMoments()
    stats.update(torch.tensor([[0.0], [2.0]]))  # std 1
    a_float = torch.tensor([[1.0], [0.1], [1.0]])
    a_quant = torch.tensor([[1.5], [-0.05], [1.01]])  # relative only, flip only, neither
    got = FlipOrRelativeError(tau=0.2).deviates(a_float, a_quant, stats.result())
    assert got.tolist() == [[True], [True], [False]]


def test_state_rule_registry():
    assert set(STATE_RULES) >= {"relative_error", "activation_flip", "either"}
    assert get_state_rule("relative_error", tau=0.3) == RelativeError(tau=0.3)
    assert RelativeError.needs_float_stats and not ActivationFlip.needs_float_stats
    rule = ActivationFlip(rho=0.1)
    assert get_state_rule(rule) is rule
    with pytest.raises(QnnRepairError) as info:
        get_state_rule("flip")
    assert "activation_flip" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(QnnRepairError, match="rho"):
        ActivationFlip(rho=1.0)
    with pytest.raises(QnnRepairError, match="tau"):
        RelativeError(tau=-0.1)
    with pytest.raises(QnnRepairError, match="relative_error"):
        get_state_rule("relative_error", rho=0.1)


# --- SpectrumLocalizer ------------------------------------------------------------------------


def test_localizer_fit():
    model, quant = make_pair("conv")
    images, labels = make_data("conv", model)
    layers = ["conv1", "conv2", "fc"]
    localizer = SpectrumLocalizer(metric="ochiai")
    assert localizer.fit(model, quant, layers, batched(images, labels)) is localizer
    assert list(localizer.scores_) == layers
    assert [len(v) for v in localizer.scores_.values()] == [4, 5, 3]
    assert len(localizer.ranking_) == 12
    for layer in layers:
        expected = compute_scores("ochiai", localizer.spectrum_.counts[layer])
        assert np.array_equal(localizer.scores_[layer], expected)
    assert localizer.ranking_ == rank_neurons(localizer.scores_, layers)
    top = localizer.ranking_[0]
    assert localizer.scores_[top.layer][top.index] == max(
        v.max() for v in localizer.scores_.values()
    )
    assert repr(localizer) == (
        "SpectrumLocalizer(metric='ochiai', state_rule='relative_error', oracle='label', "
        "metric_params=None, seed=0)"
    )


def test_localizer_parameters():
    model, quant = make_pair("mlp")
    images, labels = make_data("mlp", model)
    batches = batched(images, labels)
    star3 = SpectrumLocalizer(metric="dstar", metric_params={"star": 3}).fit(
        model, quant, ["fc1"], batches
    )
    assert np.array_equal(
        star3.scores_["fc1"], compute_scores("dstar", star3.spectrum_.counts["fc1"], star=3)
    )
    random = [
        SpectrumLocalizer(metric="random", seed=s).fit(model, quant, ["fc1", "fc2"], batches)
        for s in (0, 0, 1)
    ]
    assert random[0].ranking_ == random[1].ranking_
    assert random[0].ranking_ != random[2].ranking_
    flip = SpectrumLocalizer(state_rule=ActivationFlip(rho=0.0), oracle="float")
    assert flip.fit(model, quant, ["fc1"], batches).spectrum_.n_skipped == 0

    with pytest.raises(QnnRepairError, match="unknown metric"):
        SpectrumLocalizer(metric="nope")
    with pytest.raises(QnnRepairError, match="no parameter"):
        SpectrumLocalizer(metric="ochiai", metric_params={"star": 2})
    with pytest.raises(QnnRepairError, match="star"):
        SpectrumLocalizer(metric="dstar", metric_params={"star": -1})
    with pytest.raises(QnnRepairError, match="seed"):
        SpectrumLocalizer(metric="random", metric_params={"seed": 1})
    with pytest.raises(QnnRepairError, match="state rule"):
        SpectrumLocalizer(state_rule="nope")
    with pytest.raises(QnnRepairError, match="oracle"):
        SpectrumLocalizer(oracle="nope")
