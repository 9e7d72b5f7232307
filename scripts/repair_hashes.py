"""Hashes of the integers of repaired models, to show that a change of the code changed no result.

    python scripts/repair_hashes.py --output before.json          # on the old code
    python scripts/repair_hashes.py --compare before.json         # on the new code

Runs the repair of `make demo` (embedded ResNet-20 and CIFAR-10 subset, W3A8) and, when
../shared is present, ResNet-20 at W3A8 and W4A4 (1,000 repair images of train30k, 1,000
validation images of the test set) and the two shared MobileNetV2 .tflite files (64 repair
images of sample1000, 64 validation and 64 test images of nips17), each with the default
preset, and hashes every repaired layer's integer weights and biases (not the file's bytes:
a file format may change while the model does not). Same machine, same hashes: LPs are
deterministic, but another CPU may round float sums differently. Only R and V decide the
repaired integers; T is not hashed.
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
DEPLOYED = ("mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite")


def model_hash(qmodel) -> str:
    digest = hashlib.sha256()
    for name in qmodel.layers:
        layer = qmodel.layer(name)
        for tensor in (layer.weight_int, layer.bias_int):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return digest.hexdigest()


def cases():
    """(name, workload maker, setting; None: the deployed file as it is)."""
    from qnnrepair.formats.deployed import load_deployed
    from qnnrepair.pipeline import embedded_default, prepare, prepare_deployed

    weights, demo_data = embedded_default()
    yield "demo-w3a8", lambda: (prepare("resnet20", weights, demo_data, demo_data,
                                        n_repair=1000, n_validation=1000), None), "w3a8"
    weights = SHARED / "models" / "cifar10-resnet20.th"
    if weights.exists():
        def shared_workload():
            return prepare("resnet20", weights, SHARED / "data/cifar10/train30k.npz",
                           SHARED / "data/cifar10/test.npz", n_repair=1000,
                           n_validation=1000), None
        yield "resnet20-w3a8", shared_workload, "w3a8"
        yield "resnet20-w4a4", shared_workload, "w4a4"
    for name in DEPLOYED:
        path = SHARED / "models" / "imagenet" / name
        if path.exists():
            def deployed(path=path):
                model = load_deployed(path)
                return prepare_deployed(model, SHARED / "data/imagenet/sample1000",
                                        SHARED / "data/imagenet/nips17", n_repair=64,
                                        n_validation=64, n_test=64), model
            yield name, deployed, None


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
        workload, deployed = make()
        quant_config = None if deployed is not None else QuantConfig.from_setting(setting)
        result = run_repair(workload, quant_config, preset("default"), quantized=deployed)
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
