"""Quantizer accuracy table: CIFAR-10 test accuracy of the shared ResNet checkpoints,
float and quantized at several settings, per-channel and per-tensor weights, max-abs and MSE
weight clipping.

    python benchmarks/quantization.py [--shared ../shared] [--models resnet20 resnet32]

Calibration: 1,000 CIFAR-10 training images (the repair split of seed 0); first and last layer
at 8 bits; min-max activation ranges. Writes benchmarks/results/quantization.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_SHARED, RESULTS, Clock, command, machine, workload

from qnnrepair.evaluation import accuracy
from qnnrepair.quantization import QuantConfig, quantize

SETTINGS = ("w8a8", "w6a8", "w4a8", "w3a8", "w4a4", "w8a4")
VARIANTS = [(True, "maxabs"), (True, "mse"), (False, "maxabs"), (False, "mse")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet32"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = ["# Quantization accuracy: CIFAR-10 test images (T: 9,000 of the 10,000; the other "
             "1,000 are V)", "",
             f"Command: `{command()}`  ", f"Machine: {machine()}  ",
             "Calibration: 1,000 training images (seed 0); first and last layer at 8 bits; "
             "activations per tensor, asymmetric, min-max range. Accuracy in %.", ""]
    with Clock() as total:
        for model in args.models:
            work = workload(model, args.shared)
            x, y = work.images("test"), work.labels("test")
            lines += [f"## {model}: float {accuracy(work.model, x, y):.2f}", "",
                      "| setting | per-channel max-abs | per-channel MSE | per-tensor max-abs "
                      "| per-tensor MSE |", "|---|---|---|---|---|"]
            for setting in SETTINGS:
                cells = []
                for per_channel, clipping in VARIANTS:
                    config = QuantConfig.from_setting(setting, per_channel=per_channel,
                                                      weight_clipping=clipping)
                    qmodel = quantize(work.model, config, work.images("repair"),
                                      model_spec=model)
                    cells.append(f"{accuracy(qmodel.model, x, y):.2f}")
                lines.append(f"| {setting.upper()} | " + " | ".join(cells) + " |")
                print(model, setting, cells, flush=True)
            lines.append("")
    lines.append(f"Wall time: {total.wall:.0f} s.")
    (RESULTS / "quantization.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
