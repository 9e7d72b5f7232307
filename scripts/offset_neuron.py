"""The most blamed neurons of MobileNetV2 re-quantized, repaired alone, with and without
`count_offset` (LPConfig): validation accuracy and the first neuron's pre-activation error.

    python scripts/offset_neuron.py [--shared ../shared] [--setting w8a8-pt] [--n-repair 300]
        [--top 1 4]

R: the first `--n-repair` images of sample1000; V: 200 images of nips17 (seed 0). No guard:
each top-k set is repaired as it is (Repairer.repair_neurons).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qnnrepair.baselines.capture import collect_layer
from qnnrepair.evaluation import accuracy
from qnnrepair.formats.deployed import load_deployed
from qnnrepair.pipeline import prepare_deployed
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import Repairer, preset
from qnnrepair.repair.engine import fit_localizer

FILE = "models/imagenet/mobilenet_v2_1.0_224_quant.tflite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--setting", default="w8a8-pt")
    parser.add_argument("--n-repair", type=int, default=300)
    parser.add_argument("--top", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = args.shared / "data" / "imagenet"
    work = prepare_deployed(load_deployed(args.shared / FILE), data / "sample1000",
                            data / "nips17", n_repair=args.n_repair, n_validation=200, seed=0)
    images, labels = work.images("repair"), work.labels("repair")
    val, val_labels = work.images("validation"), work.labels("validation")
    q = quantize(work.model, QuantConfig.from_setting(args.setting), images,
                 model_spec=work.model_spec, seed=0)
    ranking = fit_localizer(q, images, labels, preset("default")).ranking_
    first = ranking[0]
    print(f"top neurons: {', '.join(map(str, ranking[:8]))}")
    print(f"V quantized {accuracy(q.model, val, val_labels):.2f} %; {first} "
          f"{_error(q, q, first, val)}")
    for count_offset in (False, True):
        repairer = Repairer(preset("default", count_offset=count_offset))
        for k in args.top:
            repaired, changes, _ = repairer.repair_neurons(q, ranking[:k], images, labels)
            print(f"count_offset={count_offset} top {k}: V "
                  f"{accuracy(repaired.model, val, val_labels):.2f} %, {len(changes)} neurons "
                  f"changed; {first} {_error(q, repaired, first, val)}")


def _error(qmodel, model, neuron, images: torch.Tensor) -> str:
    """Mean |pre-activation - float| and mean (pre-activation - float) on 50 images."""
    float_out = collect_layer(qmodel.float_model, qmodel.float_layer(neuron.layer), images[:50],
                              10, output=True)[:, neuron.index]
    out = collect_layer(model.model, model.layer(neuron.layer), images[:50], 10,
                        output=True)[:, neuron.index]
    diff = out - float_out
    return f"|pre - float| {diff.abs().mean():.4f}, mean {diff.mean():.4f}"


if __name__ == "__main__":
    main()
