"""RepairConfig: serialized into every report and read back; changed by flat field names."""

import json
from dataclasses import fields

import pytest

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair import PRESETS, RepairConfig, preset
from qnnrepair.repair.config import CONFIG_VERSION


@pytest.mark.parametrize("name", list(PRESETS))
def test_to_dict_from_dict_round_trip(name):
    config = PRESETS[name].replace(seed=7, lam=0.5, kappa=None, max_neurons=3, n_workers=1)
    data = json.loads(json.dumps(config.to_dict()))  # what a report file holds
    assert data["version"] == CONFIG_VERSION
    assert set(data) == {"version", "seed", *(f.name for f in fields(RepairConfig))}
    again = RepairConfig.from_dict(data)
    assert again == config and again.to_dict() == config.to_dict()


def test_from_dict_fills_missing_parts_with_defaults():
    assert RepairConfig.from_dict({"version": CONFIG_VERSION}) == RepairConfig()
    data = {"version": CONFIG_VERSION, "lp": {"norm": "linf"}}
    assert RepairConfig.from_dict(data) == RepairConfig().replace(norm="linf")


@pytest.mark.parametrize("version", [None, 1, CONFIG_VERSION + 1, str(CONFIG_VERSION)])
def test_from_dict_refuses_another_version_in_one_line(version):
    data = RepairConfig().to_dict()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    with pytest.raises(QnnRepairError, match=f"version {version} is not {CONFIG_VERSION}") as info:
        RepairConfig.from_dict(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, needle", [
    ({"lp": {"no_such_field": 1}}, "no_such_field"),
    ({"no_such_part": {}}, "no_such_part"),
    ({"lp": {"norm": "l3"}}, "unknown norm 'l3'"),
])
def test_from_dict_refuses_unknown_or_bad_fields_in_one_line(data, needle):
    with pytest.raises(QnnRepairError, match=needle) as info:
        RepairConfig.from_dict({"version": CONFIG_VERSION, **data})
    assert "\n" not in str(info.value)


def test_replace_by_flat_names_reaches_every_part():
    base = RepairConfig()
    new = base.replace(metric="dstar", norm="linf", growth=2, n_workers=3, seed=5)
    assert new.localization.metric == "dstar"
    assert new.lp.norm == "linf"
    assert new.acceptance.growth == 2
    assert new.execution.n_workers == 3
    assert new.seed == 5
    assert base == RepairConfig(), "replace changed the original"
    # Fields not named keep their values.
    assert new.lp.hidden_formulation == base.lp.hidden_formulation
    assert new.localization.layers == base.localization.layers
    assert base.replace() == base


def test_every_field_name_is_unique_across_parts():
    names = [f.name for part in fields(RepairConfig) if part.name != "seed"
             for f in fields(getattr(RepairConfig(), part.name))]
    assert len(names) == len(set(names)), "preset(**overrides) needs unique names"


def test_unknown_names_are_refused_in_one_line():
    with pytest.raises(QnnRepairError, match="unknown repair setting 'lamda'") as info:
        RepairConfig().replace(lamda=0.1)
    assert "\n" not in str(info.value) and "lam" in str(info.value)
    with pytest.raises(QnnRepairError, match="unknown repair setting"):
        preset("default", workers=2)
    with pytest.raises(QnnRepairError, match="unknown preset 'fast'"):
        preset("fast")


def test_values_are_validated_when_replaced():
    with pytest.raises(QnnRepairError, match="n_workers must be at least 1"):
        RepairConfig().replace(n_workers=0)
    with pytest.raises(QnnRepairError, match="unknown layers"):
        RepairConfig().replace(layers="first")
    with pytest.raises(QnnRepairError, match="min_z must be 0 or more, got -1"):
        RepairConfig().replace(min_z=-1.0)
