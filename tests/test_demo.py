"""The main job end to end: `qnnrepair demo` on the embedded ResNet-20 and CIFAR-10 subset."""

import json

import pytest

from qnnrepair.pipeline import demo_workload, run_repair
from qnnrepair.quantization import QuantConfig
from qnnrepair.repair import preset


@pytest.mark.slow
def test_demo_repairs_w3a8_and_never_loses_on_validation():
    result = run_repair(demo_workload(), QuantConfig.from_setting("w3a8"), preset("default"))
    acc = result.report.accuracy
    print(result.report.to_text())
    assert acc["validation"]["repaired"] >= acc["validation"]["quantized"]
    # The measured gain is about 16 points on the demo's 2,000 test images; 5 is a floor that
    # only a broken repair misses.
    gain = acc["test"]["repaired"] - acc["test"]["quantized"]
    assert gain > 5.0, f"test accuracy gain {gain:.2f} points <= 5"
    assert json.loads(result.report.to_json())["accuracy"] == acc
    assert result.report.changes and result.report.steps
