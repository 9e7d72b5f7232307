"""Hashes of the integers of repaired models, to show that a refactoring changed no result.

    python scripts/repair_hashes.py --output before.json          # on the old code
    python scripts/repair_hashes.py --compare before.json         # on the new code

Runs the repair of `make demo` (embedded ResNet-20 and CIFAR-10 subset, W3A8) and, when
../shared is present, ResNet-20 at W3A8 and W4A4 (1,000 repair and 1,000 validation images of
train30k, the 10,000 test images), each with the default preset, and hashes every repaired
layer's integer weights and biases. Same machine, same hashes: LPs are deterministic, but
another CPU may round float sums differently.
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


def model_hash(qmodel) -> str:
    digest = hashlib.sha256()
    for name in qmodel.layers:
        layer = qmodel.layer(name)
        for tensor in (layer.weight_int, layer.bias_int):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return digest.hexdigest()


def cases():
    from qnnrepair.pipeline import demo_workload, prepare

    yield "demo-w3a8", demo_workload, "w3a8"
    weights = SHARED / "models" / "cifar10-resnet20.th"
    if weights.exists():
        def shared_workload():
            return prepare("resnet20", weights, SHARED / "data/cifar10/train30k.npz",
                           SHARED / "data/cifar10/test.npz", n_repair=1000, n_validation=1000)
        yield "resnet20-w3a8", shared_workload, "w3a8"
        yield "resnet20-w4a4", shared_workload, "w4a4"


def main() -> int:
    from qnnrepair.pipeline import run_repair
    from qnnrepair.quantization import QuantConfig
    from qnnrepair.repair import preset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the hashes here (JSON)")
    parser.add_argument("--compare", type=Path, help="compare with hashes written before")
    args = parser.parse_args()
    hashes = {}
    for name, make, setting in cases():
        start = time.perf_counter()
        result = run_repair(make(), QuantConfig.from_setting(setting), preset("default"))
        hashes[name] = {"sha256": model_hash(result.repaired),
                        "test": result.report.accuracy["test"]["repaired"]}
        print(f"{name}: {hashes[name]['sha256'][:16]} test {hashes[name]['test']:.2f}% "
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
