"""One candidate of the acceptance loop (repair/candidate.py): how an LP's deltas are written
into a layer, and which LPs a larger candidate of the same fit solves again."""

import numpy as np
import pytest
import torch

from qnnrepair.neurons import Neuron
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.candidate import (
    FitCache,
    Targets,
    apply_result,
    build_candidate,
    by_layer,
)
from qnnrepair.repair.lp import LocalPool, LPResult
from qnnrepair.testing import blob_data, example_inputs, tiny_conv_net, trained_tiny_net


def lp_result(delta_weight, delta_bias) -> LPResult:
    """An LP outcome with the given deltas (the other fields do not matter to apply_result)."""
    delta_weight = np.asarray(delta_weight, dtype=np.int64)
    return LPResult(delta_weight, delta_bias, "optimal", 0.0, 0.0, 1.0, 1, 1, 0.25, 0.0, 0.0,
                    0.0, delta_weight.astype(np.float64), np.arange(1))


@pytest.fixture()
def w4_model():
    """The tiny net at W4A4: grid [-7, 7], so an LP delta easily leaves it."""
    config = QuantConfig.from_setting("w4a4", first_last_bits=None)
    return quantize(tiny_conv_net(), config, example_inputs(32))


def test_apply_result_clamps_rounds_the_bias_and_skips_zero_changes(w4_model):
    qmodel = w4_model.copy()
    layer = qmodel.layer("linear")  # 4 outputs x 8 inputs
    assert layer.qmax == 7
    layer.weight_int[0] = torch.tensor([7, -7, 0, 3, -2, 1, 0, 5], dtype=layer.weight_int.dtype)
    layer.weight_int[2] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0], dtype=layer.weight_int.dtype)
    before = qmodel.integer_state()
    step = layer.bias_scale().numpy().astype(np.float64)
    delta_w = [[3, -1, 0, 2, 0, 0, 0, -20],  # neuron 0: 7+3 and -7-1 clamp to the grid
               [0, 0, 0, 0, 0, 0, 0, 0],  # neuron 1: bias 0.4 steps rounds to 0: no change
               [5, 0, 0, 0, 0, 0, 0, 0]]  # neuron 2: 7+5 clamps back to 7: no change
    delta_b = [2.6 * step[0], 0.4 * step[1], 0.3 * step[2]]
    changes = apply_result(qmodel, "linear", [0, 1, 2], lp_result(delta_w, delta_b))

    # By hand: new row 0 = [7, -7, 0, 5, -2, 1, 0, -7], applied = [0, 0, 0, 2, 0, 0, 0, -12].
    assert [c.neuron for c in changes] == [Neuron("linear", 0)]
    change = changes[0]
    assert (change.weights_changed, change.delta_l1, change.delta_max, change.bias_delta) == \
        (2, 14, 12, 3)
    assert change.status == "optimal" and change.solve_seconds == 0.25
    assert layer.weight_int[0].tolist() == [7, -7, 0, 5, -2, 1, 0, -7]
    assert int(layer.bias_int[0]) == int(before["linear.bias_int"][0]) + 3
    for key, value in qmodel.integer_state().items():  # nothing else moved
        if key.startswith("linear."):
            assert torch.equal(value[1:], before[key][1:]), f"{key} changed beyond neuron 0"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"
    assert layer.weight_int.abs().max() <= layer.qmax


def test_apply_result_of_one_conv_neuron(w4_model):
    """A neuron LP gives a flat (fan_in,) delta and a float bias: reshaped to the kernel."""
    qmodel = w4_model.copy()
    layer = qmodel.layer("conv2")  # (8, 6, 3, 3): fan_in 54
    before = layer.weight_int[5].clone().long()
    delta = np.zeros(54, np.int64)
    delta[[0, 13, 53]] = [1, -2, 30]
    bias_step = float(layer.bias_scale()[5])
    bias_before = int(layer.bias_int[5])
    changes = apply_result(qmodel, "conv2", [5], lp_result(delta, -1.5 * bias_step))
    expected = torch.clamp(before.reshape(-1) + torch.from_numpy(delta), -7, 7)
    applied = expected - before.reshape(-1)
    assert torch.equal(layer.weight_int[5].long().reshape(-1), expected)
    # -1.5 steps: Python's round() goes to the even neighbour, -2.
    assert int(layer.bias_int[5]) == bias_before - 2
    (change,) = changes
    assert change.neuron == Neuron("conv2", 5)
    assert change.weights_changed == int((applied != 0).sum())
    assert change.delta_l1 == int(applied.abs().sum())
    assert change.delta_max == int(applied.abs().max())
    assert change.bias_delta == -2


class RecordingBackend:
    """Solves in this process and keeps each call's problems."""

    def __init__(self) -> None:
        self.calls: list[list] = []
        self.pool = LocalPool(n_workers=1)

    def solve(self, problems):
        self.calls.append(list(problems))
        return self.pool.solve(problems)

    @property
    def n_problems(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture(scope="module")
def case():
    model = trained_tiny_net(seed=0)
    images, labels = blob_data(150, seed=3)
    qmodel = quantize(model, QuantConfig.from_setting("w2a4", first_last_bits=None), images)
    config = preset("default", n_workers=1, max_rows=100, hidden_rows=64, summary_samples=512)
    return qmodel, images, Targets.of(qmodel, images, labels, "label"), config


def test_a_larger_candidate_solves_only_the_new_lps(case):
    qmodel, images, targets, config = case
    backend, cache = RecordingBackend(), FitCache()

    def build(*neurons):
        n_before = backend.n_problems
        candidate, _, solved = build_candidate(qmodel, list(neurons), images, targets, config,
                                               backend, cache)
        assert len(solved) == backend.n_problems - n_before
        return candidate, len(solved)

    conv1_0, conv2_0, conv2_1 = Neuron("conv1", 0), Neuron("conv2", 0), Neuron("conv2", 1)
    _, n = build(conv2_0)
    assert n == 1
    _, n = build(conv2_0, conv2_1)  # same layer, same upstream: only conv2:1 is new
    assert n == 1
    assert set(cache.results) == {("conv2", (0,), frozenset()), ("conv2", (1,), frozenset())}
    cached, n = build(conv1_0, conv2_0, conv2_1)  # conv1:0 upstream: conv2 is solved again
    assert n == 3
    upstream = frozenset({("conv1", 0)})
    assert {("conv1", (0,), frozenset()), ("conv2", (0,), upstream),
            ("conv2", (1,), upstream)} <= set(cache.results)
    again, n = build(conv2_1, conv1_0, conv2_0)  # the same set in another order: all cached
    assert n == 0
    fresh, _, _ = build_candidate(qmodel, [conv1_0, conv2_0, conv2_1], images, targets, config,
                                  RecordingBackend(), FitCache())
    for state in (again.integer_state(), fresh.integer_state()):
        for key, value in cached.integer_state().items():
            assert torch.equal(state[key], value), f"{key}: a cached candidate differs"


def test_the_float_layers_of_a_fit_are_recorded_in_one_pass_with_the_same_rows(case,
                                                                              monkeypatch):
    """A fit names every layer it may repair (FitCache.float_layers): the first candidate
    records all their float rows in one pass, later candidates none, and each layer's rows
    equal those recorded for it alone."""
    import qnnrepair.repair.candidate as candidate_module

    qmodel, images, targets, config = case
    passes = []
    record = candidate_module.record_float_rows

    def counted(qm, layers, *args, **kwargs):
        passes.append(list(layers))
        return record(qm, layers, *args, **kwargs)

    monkeypatch.setattr(candidate_module, "record_float_rows", counted)
    cache = FitCache(float_layers=["conv1", "conv2"])
    build_candidate(qmodel, [Neuron("conv1", 0)], images, targets, config, RecordingBackend(),
                    cache)
    build_candidate(qmodel, [Neuron("conv1", 0), Neuron("conv2", 1)], images, targets, config,
                    RecordingBackend(), cache)
    assert passes == [["conv1", "conv2"]]
    alone = FitCache()
    build_candidate(qmodel, [Neuron("conv2", 1)], images, targets, config, RecordingBackend(),
                    alone)
    assert passes[1:] == [["conv2"]]
    (key,) = [k for k in alone.float_rows if k[0] == "conv2"]
    assert np.array_equal(alone.float_rows[key], cache.float_rows[key])


def test_repairer_solves_each_lp_key_once_per_fit(case):
    """Passed as `Repairer(config, backend=...)`, the backend sees exactly one problem per
    distinct (layer, neurons, upstream) over all candidates of the fit."""
    qmodel, images, targets, config = case
    labels = torch.from_numpy(targets.label)
    backend = RecordingBackend()
    repairer = Repairer(config, backend=backend).fit(qmodel, images, labels, images, labels)
    keys = set()
    for step in repairer.steps_:
        upstream = frozenset()
        for name, indices in by_layer(qmodel, step.neurons).items():
            keys |= {(name, (c,), upstream) for c in indices}
            upstream |= {(name, c) for c in indices}
    print(f"{len(repairer.steps_)} candidates, {backend.n_problems} LPs, {len(keys)} keys")
    assert len(repairer.steps_) >= 2, "the case must try more than one candidate"
    assert backend.n_problems == len(keys) == sum(s.n_lps for s in repairer.steps_)


def test_one_pass_candidate_equals_a_pass_per_layer(case, monkeypatch):
    """Layers with "match" LPs are recorded and repaired inside one forward pass; with the
    pass switched off (a pass per layer, as for formulations that record other rows) the
    candidate is the same, integer for integer, from the same LPs."""
    from qnnrepair.repair.lp.match import Match

    qmodel, images, targets, config = case
    neurons = [Neuron("conv1", 0), Neuron("conv1", 3), Neuron("conv2", 1), Neuron("conv2", 5)]
    one_pass, changes, solved = build_candidate(qmodel, neurons, images, targets, config,
                                                RecordingBackend(), FitCache())
    monkeypatch.setattr(Match, "pass_rows", False)
    per_layer, changes_2, solved_2 = build_candidate(qmodel, neurons, images, targets, config,
                                                     RecordingBackend(), FitCache())
    assert len(solved) == len(solved_2) == 4
    assert changes, "no neuron changed: the comparison would be empty"
    timeless = [({**c.to_dict(), "solve_seconds": 0} for c in cs) for cs in (changes, changes_2)]
    assert list(timeless[0]) == list(timeless[1])
    for key, value in one_pass.integer_state().items():
        assert torch.equal(value, per_layer.integer_state()[key]), key


def test_a_pass_stops_for_a_layer_that_records_its_own_rows(case):
    """Hidden "sign" LPs record raw rows by a pass of their own; a candidate mixing them with
    the output layer's margin LP still repairs every layer in order."""
    qmodel, images, targets, _ = case
    config = preset("default", n_workers=1, max_rows=100, hidden_rows=64, summary_samples=512,
                    hidden_formulation="sign", layers="all")
    neurons = [Neuron("conv2", 1), Neuron("linear", 0)]
    candidate, _, solved = build_candidate(qmodel, neurons, images, targets, config,
                                           RecordingBackend(), FitCache())
    assert len(solved) == 2
    assert candidate.layers == qmodel.layers
