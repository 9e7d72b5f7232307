"""The repair loop on a tiny real model with real LP solves."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qnnrepair.evaluation import accuracy
from qnnrepair.experimental import rank_in_rounds
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.engine import fast_layout
from qnnrepair.testing import blob_data, trained_tiny_net


def tiny_case(seed: int):
    """A trained tiny net, its W2A4 copy, a repair and a validation set of 150 images each."""
    model = trained_tiny_net(seed=seed % 3)
    images, labels = blob_data(300, seed=seed)
    config = QuantConfig.from_setting("w2a4", first_last_bits=None)
    qmodel = quantize(model, config, images[:150])
    return qmodel, images[:150], labels[:150], images[150:], labels[150:]


def fit(qmodel, r_x, r_y, v_x, v_y, **overrides):
    settings = {"n_workers": 1, "time_budget_s": 30, "max_rows": 200, **overrides}
    config = preset("default", **settings)
    return Repairer(config).fit(qmodel, r_x, r_y, v_x, v_y)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000))
def test_repair_never_lowers_validation_accuracy(seed):
    qmodel, r_x, r_y, v_x, v_y = tiny_case(seed)
    repairer = fit(qmodel, r_x, r_y, v_x, v_y, seed=seed)
    before = accuracy(qmodel.model, v_x, v_y)
    after = accuracy(repairer.repaired_.model, v_x, v_y)
    print(f"seed {seed}: validation {before:.2f}% -> {after:.2f}%")
    assert after >= before
    assert repairer.validation_accuracy_["repaired"] == pytest.approx(after)


def test_repair_changes_integers_on_the_grid_and_leaves_input_alone():
    qmodel, r_x, r_y, v_x, v_y = tiny_case(3)
    before = qmodel.integer_state()
    repairer = fit(qmodel, r_x, r_y, v_x, v_y)
    for key, value in qmodel.integer_state().items():
        assert torch.equal(value, before[key]), f"input model changed at {key}"
    for name in repairer.repaired_.layers:
        layer = repairer.repaired_.layer(name)
        assert layer.weight_int.abs().max() <= layer.qmax
    assert len(repairer.steps_) >= 1


def test_a_fit_runs_channels_last_and_hands_back_the_standard_layout():
    qmodel, r_x, r_y, v_x, v_y = tiny_case(3)
    fast = fast_layout(qmodel)
    for name in qmodel.layers[:2]:  # the convolutions
        assert fast.layer(name).weight_int.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(fast.layer(name).weight_int, qmodel.layer(name).weight_int)
    assert torch.allclose(fast.model(v_x), qmodel.model(v_x), atol=1e-5)
    assert fast.float_model is not qmodel.float_model

    repaired = fit(qmodel, r_x, r_y, v_x, v_y).repaired_
    assert repaired.float_model is qmodel.float_model
    for key, value in repaired.model.state_dict().items():
        assert value.is_contiguous(), f"{key} is not in the standard layout"
    for key, value in qmodel.model.state_dict().items():
        assert value.is_contiguous(), f"the input model's {key} changed layout"


def test_same_seed_same_repaired_model():
    states = []
    for _ in range(2):
        qmodel, r_x, r_y, v_x, v_y = tiny_case(5)
        states.append(fit(qmodel, r_x, r_y, v_x, v_y).repaired_.integer_state())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between runs"


def test_repair_helps_on_a_broken_tiny_model():
    """W2A4 breaks the tiny net; the repair must recover part of it on the repair set."""
    qmodel, r_x, r_y, v_x, v_y = tiny_case(7)
    repairer = fit(qmodel, r_x, r_y, v_x, v_y)
    before = accuracy(qmodel.model, r_x, r_y)
    after = accuracy(repairer.repaired_.model, r_x, r_y)
    print(f"repair set {before:.1f}% -> {after:.1f}%, changes {len(repairer.changes_)}")
    assert after > before, f"repair-set accuracy did not rise: {before:.1f}% -> {after:.1f}%"
    assert any(s.accepted for s in repairer.steps_), "no step was kept"


def test_paper_preset_touches_only_the_last_layer():
    qmodel, r_x, r_y, v_x, v_y = tiny_case(11)
    config = preset("paper", n_workers=1, time_limit=2.0)
    repairer = Repairer(config).fit(qmodel, r_x, r_y, v_x, v_y)
    last = qmodel.layers[-1]
    print(f"paper preset: {len(repairer.steps_)} steps, accepted "
          f"{[s.accepted for s in repairer.steps_]}, validation {repairer.validation_accuracy_}")
    # Whatever the outcome: the ranking, every step and every change are in the last layer,
    # one neuron more per step (linear schedule), at most 10.
    assert repairer.ranking_ and {n.layer for n in repairer.ranking_} == {last}
    assert 1 <= len(repairer.steps_) <= 10, "no step ran"
    assert [len(s.neurons) for s in repairer.steps_] == list(range(1, len(repairer.steps_) + 1))
    for step in repairer.steps_:
        assert step.neurons == repairer.ranking_[:len(step.neurons)]
        # One sign LP per neuron on the unchanged input of the last layer: each step solves
        # only its new neuron's LP and reuses the earlier ones.
        assert step.n_lps == 1
    assert {c.neuron.layer for c in repairer.changes_} <= {last}
    # On this case (validation 78.7% quantized, 98.7% float) the paper preset keeps a change.
    assert repairer.changes_, "the paper preset changed nothing on the broken tiny case"
    assert any(s.accepted for s in repairer.steps_)
    changed = [k for k, v in repairer.repaired_.integer_state().items()
               if not torch.equal(v, qmodel.integer_state()[k])]
    assert changed and all(k.startswith(f"{last}.") for k in changed), changed
    assert repairer.validation_accuracy_["repaired"] > repairer.validation_accuracy_["quantized"]


def test_geometric_schedule_ends_with_every_neuron():
    repairer = Repairer(preset("default", growth=4))
    assert repairer.schedule(70) == [1, 4, 16, 70]  # 64 of 70 would cost as much as 70
    assert repairer.schedule(128) == [1, 4, 16, 64, 128]
    assert repairer.schedule(64) == [1, 4, 16, 64]
    assert Repairer(preset("paper")).schedule(3) == [1, 2, 3]


def test_workers_give_the_same_result():
    qmodel, r_x, r_y, v_x, v_y = tiny_case(13)
    one = fit(qmodel, r_x, r_y, v_x, v_y)
    two = fit(qmodel, r_x, r_y, v_x, v_y, n_workers=2)
    assert [s.to_dict()["neurons"] for s in one.steps_] == \
        [s.to_dict()["neurons"] for s in two.steps_]
    for key, value in one.repaired_.integer_state().items():
        assert torch.equal(value, two.repaired_.integer_state()[key]), f"{key} differs"
    # Validation may keep nothing, so also compare a candidate that surely changes integers:
    # every ranked neuron repaired, in one process and in two.
    neurons = one.ranking_
    a, a_changes, _ = one.repair_neurons(qmodel, neurons, r_x, r_y)
    b, b_changes, _ = two.repair_neurons(qmodel, neurons, r_x, r_y)
    print(f"{len(a_changes)} neurons changed by the full candidate")
    assert a_changes, "the full candidate changed nothing: the comparison would say nothing"
    assert [c.neuron for c in a_changes] == [c.neuron for c in b_changes]
    assert any(not torch.equal(v, qmodel.integer_state()[k])
               for k, v in a.integer_state().items())
    for key, value in a.integer_state().items():
        assert torch.equal(value, b.integer_state()[key]), f"{key} differs between 1 and 2 workers"


def test_ranking_in_rounds_ranks_each_round_on_the_model_repaired_so_far():
    """Round one is the plain ranking's top; round two is the top of the ranking taken on the
    model with round one repaired, leaving out round one's neurons; bad round sizes refused."""
    from qnnrepair.errors import QnnRepairError
    from qnnrepair.repair.engine import fit_localizer

    qmodel, r_x, r_y, _, _ = tiny_case(7)
    repairer = Repairer(preset("default", n_workers=1))
    plain = fit_localizer(qmodel, r_x, r_y, repairer.config).ranking_
    rounds = rank_in_rounds(repairer, qmodel, 6, 3, r_x, r_y)
    assert rounds[:3] == plain[:3]
    repaired, changes, _ = repairer.repair_neurons(qmodel, rounds[:3], r_x, r_y)
    assert changes, "round one changed nothing: round two would rank the same model"
    again = fit_localizer(repaired, r_x, r_y, repairer.config).ranking_
    assert rounds[3:] == [n for n in again if n not in rounds[:3]][:3]
    assert len(set(rounds)) == 6
    print(f"plain {plain[:6]}\nrounds {rounds}")
    assert rank_in_rounds(repairer, qmodel, 6, 3, r_x, r_y) == rounds
    assert rank_in_rounds(repairer, qmodel, 4, 10, r_x, r_y) == plain[:4]
    assert len(rank_in_rounds(repairer, qmodel, 10**6, 1000, r_x, r_y)) == len(plain)
    with pytest.raises(QnnRepairError, match="round_size must be at least 1"):
        rank_in_rounds(repairer, qmodel, 6, 0, r_x, r_y)
