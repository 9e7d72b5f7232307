"""CPU seconds of one forward pass in the standard and the channels-last layout.

    OMP_NUM_THREADS=1 python benchmarks/layout_cost.py [--repeats 2]

The passes a repair makes (repair.engine.fast_layout): ResNet-32 W4A8 (quantized and float)
over the 1,000 validation images of the bench's splits, and MobileNetV2 from the shared int8
`.tflite` file (its simulation and its float reference) over 16 random 224x224 images.
Prints each pass's CPU seconds per layout, alternated `--repeats` times, and the largest
difference between the two layouts' outputs.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import DEFAULT_SHARED, machine, workload

from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair.engine import fast_layout

TFLITE = DEFAULT_SHARED / "models" / "imagenet" / "tf2_mobilenet_v2_1.0_224_ptq.tflite"


@torch.no_grad()
def timed(module: torch.nn.Module, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.process_time()
    out = torch.cat([module(images[i:i + 500]) for i in range(0, len(images), 500)])
    return time.process_time() - start, out


def compare(name: str, qmodel, images: torch.Tensor, repeats: int) -> None:
    layouts = {"standard": qmodel, "channels-last": fast_layout(qmodel)}
    for net in ("model", "float_model"):
        seconds: dict[str, list[float]] = {k: [] for k in layouts}
        outs = {}
        for _ in range(repeats):
            for layout, q in layouts.items():
                cpu, outs[layout] = timed(getattr(q, net), images)
                seconds[layout].append(cpu)
        diff = (outs["standard"] - outs["channels-last"]).abs().max().item()
        print(f"{name} {'quantized' if net == 'model' else 'float'}: "
              + ", ".join(f"{k} {' / '.join(f'{s:.2f}' for s in v)} CPU s"
                          for k, v in seconds.items())
              + f"; largest output difference {diff:.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    work = workload("resnet32", DEFAULT_SHARED)
    qmodel = quantize(work.model, QuantConfig.from_setting("w4a8"), work.images("repair"),
                      model_spec="resnet32")
    compare("ResNet-32 W4A8, 1,000 images", qmodel, work.images("validation"), args.repeats)
    if TFLITE.exists():
        from qnnrepair.formats.deployed import load_deployed

        images = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
        compare("MobileNetV2 int8 .tflite, 16 images", load_deployed(TFLITE), images,
                args.repeats)


if __name__ == "__main__":
    main()
