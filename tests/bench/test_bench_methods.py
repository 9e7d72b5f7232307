"""The bench methods registry: what is registered, how a plug-in joins, what BenchConfig accepts."""

import pytest

from qnnrepair.bench import (
    BASELINE_METHODS,
    METHODS,
    ON_TOP,
    REPAIR_METHODS,
    BenchConfig,
    get_method,
    register_method,
)
from qnnrepair.errors import QnnRepairError


def test_every_default_method_is_registered_and_only_baselines_stack():
    for name in BASELINE_METHODS + REPAIR_METHODS:
        assert get_method(name).name == name
    assert {n for n in BASELINE_METHODS if get_method(n).stackable} == set(BASELINE_METHODS)
    assert not any(get_method(n).stackable for n in REPAIR_METHODS)
    assert ON_TOP in REPAIR_METHODS


def test_a_registered_method_is_selectable_and_stackable(monkeypatch):
    monkeypatch.setattr("qnnrepair.bench.methods.METHODS", METHODS.copy())
    from qnnrepair.bench import methods

    @register_method("identity", "the RTN model itself", stackable=True)
    def identity(start, work, setting, config):
        return start.copy()

    assert methods.METHODS["identity"].run is identity
    config = BenchConfig(methods=("rtn", "identity"), on_top=("identity",))
    assert config.to_dict()["on_top"] == ("identity",)
    with pytest.raises(QnnRepairError, match="already registered"):
        register_method("identity", "again")(identity)


@pytest.mark.parametrize("kwargs,needle", [
    ({"methods": ("rtn", "brecq")}, "unknown bench method 'brecq'; known methods: adaround"),
    ({"on_top": ("qnnrepair",)}, "cannot be stacked on"),
    ({"methods": ("rtn", "adaround"), "on_top": ("qdrop",)}, "'qdrop', which is not among"),
])
def test_config_names_what_is_wrong(kwargs, needle):
    with pytest.raises(QnnRepairError, match=needle):
        BenchConfig(**kwargs)


def test_any_registered_baseline_is_a_bench_method(monkeypatch):
    from qnnrepair.baselines import registry

    monkeypatch.setattr(registry, "BASELINES", registry.BASELINES.copy())
    monkeypatch.setattr("qnnrepair.bench.methods.BASELINES", registry.BASELINES)
    registry.register_baseline("plugin_rounding")(lambda qmodel, images, *, seed=0: qmodel)
    method = get_method("plugin_rounding")
    assert method.stackable and method.name == "plugin_rounding"
    BenchConfig(methods=("rtn", "plugin_rounding"), on_top=("plugin_rounding",))
