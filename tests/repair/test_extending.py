"""Extending the repair as the docstrings of repair/lp/formulation.py and backend.py say: a new
formulation registered by name, a new LP backend passed as an object or registered by name.
Each test registers its plug-in, runs a real repair on a tiny model, and unregisters it."""

from dataclasses import dataclass

import pytest
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import LPConfig, RepairConfig, Repairer, preset
from qnnrepair.repair.lp import (
    BACKENDS,
    FORMULATIONS,
    Formulation,
    LocalPool,
    NeuronProblem,
    register_backend,
    register_formulation,
)
from qnnrepair.testing import blob_data, trained_tiny_net

SETTINGS = {"n_workers": 1, "max_rows": 100, "hidden_rows": 64, "summary_samples": 512}


@pytest.fixture(scope="module")
def case():
    """The tiny net at W2A4 (broken enough that the repair tries several candidates)."""
    model = trained_tiny_net(seed=0)
    images, labels = blob_data(300, seed=3)
    qmodel = quantize(model, QuantConfig.from_setting("w2a4", first_last_bits=None),
                      images[:150])
    return qmodel, images[:150], labels[:150], images[150:], labels[150:]


def assert_on_the_grid(qmodel):
    for name in qmodel.layers:
        layer = qmodel.layer(name)
        worst = int(layer.weight_int.abs().max())
        assert worst <= layer.qmax, f"{name}: |weight| {worst} > qmax {layer.qmax}"


@dataclass(frozen=True)
class CountedProblem:
    """A problem that records its solve (in this process: n_workers=1) and delegates."""

    inner: NeuronProblem
    log: list

    def solve(self):
        self.log.append(len(self.inner.target))
        return self.inner.solve()


@pytest.fixture()
def toy_match():
    """Formulation "toy_match": an L1 match to the float pre-activation on raw rows."""
    built, solved = [], []

    @register_formulation("toy_match")
    class ToyMatch(Formulation):
        def build(self, layer, owner):
            (c,) = owner
            rows = layer.record(layer.n_rows, layer.n_rows)
            keep = layer.row_mask(rows)
            built.append((layer.name, c))
            problem = NeuronProblem(
                rows.inputs[keep][:, rows.columns(c)], rows.float_out[keep, c], layer.weight[c],
                float(layer.scale[c]), float(layer.bias[c]), mode="match",
                delta_bounds=layer.delta_bounds(c), max_rows=layer.n_rows, **layer.options)
            return CountedProblem(problem, solved)

    try:
        yield built, solved
    finally:
        FORMULATIONS.pop("toy_match", None)


def test_a_registered_formulation_is_built_and_solved(case, toy_match):
    built, solved = toy_match
    qmodel, r_x, r_y, v_x, v_y = case
    config = preset("default", hidden_formulation="toy_match", **SETTINGS)
    assert RepairConfig.from_dict(config.to_dict()) == config  # a report names it
    repairer = Repairer(config).fit(qmodel, r_x, r_y, v_x, v_y)
    n_lps = sum(s.n_lps for s in repairer.steps_)
    print(f"fit: {len(built)} problems built, {len(solved)} solved, steps "
          f"{[len(s.neurons) for s in repairer.steps_]}, {len(repairer.changes_)} changes kept")
    assert built and len(solved) == len(built) == n_lps
    assert_on_the_grid(repairer.repaired_)

    # Every hidden neuron at once, without validation: one toy problem each, and changes.
    built.clear()
    solved.clear()
    hidden = [n for n in repairer.ranking_ if n.layer != qmodel.layers[-1]]
    candidate, changes, step = repairer.repair_neurons(qmodel, hidden, r_x, r_y)
    print(f"all {len(hidden)} hidden neurons: {len(solved)} solved, {len(changes)} changed")
    assert sorted(built) == sorted((n.layer, n.index) for n in hidden)
    assert len(solved) == step.n_lps == len(hidden)
    assert changes, "the toy LPs changed nothing: the test cannot tell they were applied"
    assert {c.neuron.layer for c in changes} <= {n.layer for n in hidden}
    assert_on_the_grid(candidate)


def test_an_unregistered_formulation_is_refused():
    with pytest.raises(QnnRepairError, match="unknown hidden_formulation 'toy_match'"):
        LPConfig(hidden_formulation="toy_match")
    with pytest.raises(QnnRepairError, match="already registered"):
        register_formulation("match")(Formulation)


class CountingBackend:
    """An LP backend: anything with solve(problems) -> results in order."""

    def __init__(self, n_workers: int = 1) -> None:
        self.n_workers = n_workers
        self.calls: list[int] = []

    def solve(self, problems):
        problems = list(problems)
        self.calls.append(len(problems))
        return LocalPool(n_workers=1).solve(problems)


def test_a_backend_object_solves_every_lp_and_changes_nothing(case):
    qmodel, r_x, r_y, v_x, v_y = case
    config = preset("default", **SETTINGS)
    backend = CountingBackend()
    mine = Repairer(config, backend=backend).fit(qmodel, r_x, r_y, v_x, v_y)
    print(f"fit: backend calls {backend.calls}, LPs per step {[s.n_lps for s in mine.steps_]}")
    assert backend.calls and sum(backend.calls) == sum(s.n_lps for s in mine.steps_)
    assert_on_the_grid(mine.repaired_)

    # The same candidate from the object and from the default local pool (two processes).
    neurons = mine.ranking_
    calls_before = len(backend.calls)
    ours, ours_changes, _ = mine.repair_neurons(qmodel, neurons, r_x, r_y)
    assert len(backend.calls) > calls_before
    pool = Repairer(config.replace(n_workers=2))
    theirs, _, _ = pool.repair_neurons(qmodel, neurons, r_x, r_y)
    assert ours_changes, "nothing changed: equality of the two candidates would say nothing"
    expected = theirs.integer_state()
    for key, value in ours.integer_state().items():
        assert torch.equal(value, expected[key]), f"{key}: the backend changed the result"


@pytest.fixture()
def toy_backend():
    made: list[CountingBackend] = []

    @register_backend("toy")
    def make_toy(n_workers: int = 1) -> CountingBackend:
        made.append(CountingBackend(n_workers))
        return made[-1]

    try:
        yield made
    finally:
        BACKENDS.pop("toy", None)


def test_a_registered_backend_is_chosen_by_name(case, toy_backend):
    qmodel, r_x, r_y, v_x, v_y = case
    config = preset("default", backend="toy", **SETTINGS)
    repairer = Repairer(config).fit(qmodel, r_x, r_y, v_x, v_y)
    assert len(toy_backend) == 1 and toy_backend[0].n_workers == 1
    assert sum(toy_backend[0].calls) == sum(s.n_lps for s in repairer.steps_) > 0
    assert_on_the_grid(repairer.repaired_)
    with pytest.raises(QnnRepairError, match="already registered"):
        register_backend("toy")(CountingBackend)


class ClosingBackend(CountingBackend):
    """A backend with resources to release: close() is called by whoever made it."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_fit_closes_the_backend_it_made_and_not_a_given_one(case):
    qmodel, r_x, r_y, v_x, v_y = case
    made: list[ClosingBackend] = []
    register_backend("closing")(lambda n_workers=1: made.append(ClosingBackend()) or made[-1])
    try:
        Repairer(preset("default", backend="closing", **SETTINGS)).fit(qmodel, r_x, r_y, v_x, v_y)
    finally:
        BACKENDS.pop("closing", None)
    assert len(made) == 1 and made[0].calls and made[0].closed
    given = ClosingBackend()
    Repairer(preset("default", **SETTINGS), backend=given).fit(qmodel, r_x, r_y, v_x, v_y)
    assert given.calls and not given.closed


def test_an_unregistered_backend_is_refused():
    with pytest.raises(QnnRepairError, match="unknown backend 'toy'"):
        preset("default", backend="toy")


class TopChannelBlame:
    """A toy blame signal: the highest channel index of each layer is the most to blame."""

    def __init__(self, boost: float = 1.0) -> None:
        self.boost = boost

    def fit(self, float_model, quant_model, layers, batches, show_progress=False):
        from qnnrepair.localization import rank_neurons

        self.scores_ = {name: self.boost * torch.arange(
            quant_model.get_submodule(name).out_features, dtype=torch.float64).numpy()
            for name in layers}
        self.ranking_ = rank_neurons(self.scores_, list(layers))
        return self


def test_a_registered_blame_signal_ranks_the_repair(case):
    """The steps of docs/ARCHITECTURE.md: register a localizer class by name, then name it as
    the repair's metric; the repair's ranking is the one the class learned."""
    from qnnrepair.localization import BLAME_LOCALIZERS, register_localizer

    qmodel, r_x, r_y, v_x, v_y = case
    register_localizer("top_channel")(TopChannelBlame)
    try:
        with pytest.raises(QnnRepairError, match="already registered"):
            register_localizer("top_channel")(TopChannelBlame)
        repairer = Repairer(preset("default", metric="top_channel", **SETTINGS)).fit(
            qmodel, r_x, r_y, v_x, v_y)
    finally:
        BLAME_LOCALIZERS.pop("top_channel")
    assert isinstance(repairer.localizer_, TopChannelBlame)
    first = repairer.ranking_[0]
    width = qmodel.layer(first.layer).out_features
    print(f"top of the ranking: {first} (width {width}); steps {len(repairer.steps_)}")
    assert first.index == width - 1, "the ranking is not the registered signal's"
    assert repairer.steps_ and repairer.steps_[0].neurons == [first]
    with pytest.raises(QnnRepairError, match="unknown metric 'top_channel'"):
        preset("default", metric="top_channel")
