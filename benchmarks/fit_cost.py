"""CPU seconds of one default repair, and a fingerprint of what it made.

    OMP_NUM_THREADS=1 python benchmarks/fit_cost.py [--model resnet20] [--setting w3a8] [--seed 0]

Quantizes the model (the bench's splits: R = 1,000 training images, V = 1,000 of the test file,
T = the rest), fits the default Repairer and prints the CPU seconds of the quantization and of
the fit (this process and its finished LP workers), the fit's wall seconds and phases, its
candidates, V and T accuracy, and SHA-256 prefixes of the ranking scores and of the repaired
model's state. To compare two revisions, run this under each in turn, several times: equal
fingerprints say the faster code made the same model.
"""

from __future__ import annotations

import argparse
import hashlib

import torch
from common import DEFAULT_SHARED, Clock, workload

from qnnrepair.evaluation import accuracy
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset


def fingerprint(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--setting", default="w3a8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = workload(args.model, DEFAULT_SHARED, seed=args.seed)
    with Clock() as quantizing:
        qmodel = quantize(work.model, QuantConfig.from_setting(args.setting),
                          work.images("repair"), model_spec=args.model, seed=args.seed)
    with Clock() as fitting:
        repairer = Repairer(preset("default", seed=args.seed)).fit(
            qmodel, work.images("repair"), work.labels("repair"), work.images("validation"),
            work.labels("validation"))
    state = repairer.repaired_.model.state_dict()
    print(f"quantize {quantizing.cpu:.2f} CPU s, fit {fitting.cpu:.2f} CPU s, "
          f"{fitting.wall:.1f} s wall; phases (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in repairer.timings_.items()))
    for step in repairer.steps_:
        print(f"  top {len(step.neurons)}: {step.n_lps} LPs, V {step.validation_accuracy:.2f}, "
              f"KL {step.validation_divergence:.4f}, {'kept' if step.accepted else 'rejected'}")
    test = accuracy(repairer.repaired_.model, work.images("test"), work.labels("test"))
    print(f"V {repairer.validation_accuracy_['repaired']:.2f} %, "
          f"KL {repairer.validation_divergence_['repaired']!r}, T {test:.2f} %")
    print("scores", fingerprint(repairer.scores_[k] for k in sorted(repairer.scores_)),
          "model", fingerprint(state[k].numpy() for k in sorted(state)))


if __name__ == "__main__":
    main()
