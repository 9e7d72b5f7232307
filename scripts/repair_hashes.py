"""Hashes of the integers of repaired models, to show that a refactoring changed no result.

    python scripts/repair_hashes.py --output before.json          # on the old code
    python scripts/repair_hashes.py --compare before.json         # on the new code

Runs the repair of `make demo` (embedded ResNet-20 and CIFAR-10 subset, W3A8) and, when
../shared is present, ResNet-20 at W3A8 and W4A4 (1,000 repair and 1,000 validation images of
train30k), each with the default preset, and hashes every repaired layer's integer weights and
biases. Same machine, same hashes: LPs are deterministic, but another CPU may round float sums
differently.

`--settings` picks what "the default preset" means: "current" (today's default and splits:
validation drawn from the held-out file, the KL guard), or "issue-12", the default before
issue 13 changed it (validation drawn from the training pool after R, the accuracy guard), to
show that the restructure of issue 12 changed no result. Only R and V decide the repaired
integers; T is not hashed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The default preset as it was before issue 13 changed it, spelled out.
ISSUE_12_DEFAULT = {"metric": "ochiai", "criterion": "accuracy", "min_gain": 0.0,
                    "schedule": "geometric", "max_columns": None}


def model_hash(qmodel) -> str:
    digest = hashlib.sha256()
    for name in qmodel.layers:
        layer = qmodel.layer(name)
        for tensor in (layer.weight_int, layer.bias_int):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return digest.hexdigest()


def cases(training_validation: bool):
    """(name, workload maker, setting). With `training_validation`, V is drawn from the
    training pool after R, as before issue 13 (and T is left empty)."""
    from qnnrepair.pipeline import embedded_default, prepare

    weights, demo_data = embedded_default()
    test = None if training_validation else demo_data
    n_test = 0 if training_validation else None
    yield "demo-w3a8", lambda: prepare("resnet20", weights, demo_data, test, n_repair=1000,
                                       n_validation=1000, n_test=n_test), "w3a8"
    weights = SHARED / "models" / "cifar10-resnet20.th"
    if weights.exists():
        test = None if training_validation else SHARED / "data/cifar10/test.npz"

        def shared_workload():
            return prepare("resnet20", weights, SHARED / "data/cifar10/train30k.npz", test,
                           n_repair=1000, n_validation=1000, n_test=n_test)
        yield "resnet20-w3a8", shared_workload, "w3a8"
        yield "resnet20-w4a4", shared_workload, "w4a4"


def main() -> int:
    from qnnrepair.pipeline import run_repair
    from qnnrepair.quantization import QuantConfig
    from qnnrepair.repair import preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the hashes here (JSON)")
    parser.add_argument("--compare", type=Path, help="compare with hashes written before")
    parser.add_argument("--settings", choices=("current", "issue-12"), default="current")
    args = parser.parse_args()
    before_issue_13 = args.settings == "issue-12"
    config = preset("default", **ISSUE_12_DEFAULT) if before_issue_13 else preset("default")
    hashes = {}
    for name, make, setting in cases(before_issue_13):
        start = time.perf_counter()
        result = run_repair(make(), QuantConfig.from_setting(setting), config)
        hashes[name] = {"sha256": model_hash(result.repaired),
                        "validation": result.report.accuracy["validation"]["repaired"],
                        "test": result.report.accuracy["test"]["repaired"]}
        print(f"{name}: {hashes[name]['sha256'][:16]} validation "
              f"{hashes[name]['validation']:.2f}% test {hashes[name]['test']:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if args.output:
        args.output.write_text(json.dumps(hashes, indent=1) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        same = all(before.get(k, {}).get("sha256") == v["sha256"] for k, v in hashes.items())
        print("identical" if same and before.keys() == hashes.keys() else "DIFFERENT")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
