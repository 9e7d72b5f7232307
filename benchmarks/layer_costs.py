"""Which layer causes the drop? The per-layer table of deployed files.

    python benchmarks/layer_costs.py [--images 50] [--repair-images 64]

For the two shared MobileNetV2 .tflite files (R = sample1000, V = images of nips17) and for an
ONNX QDQ ResNet-20 (the shared CIFAR-10 checkpoint exported by torch.onnx and quantized by ONNX
Runtime's quantize_static, per tensor, on 256 training images; V = CIFAR-10 test images), the
table `qnnrepair localize` prints: per layer, validation accuracy and KL with that layer alone
in float and alone quantized, and its share of the gradient blame on R. Writes
benchmarks/results/layer_costs.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_SHARED, RESULTS, command, machine

from qnnrepair.architectures import export_float, quantize_qdq
from qnnrepair.data.splits import spread
from qnnrepair.formats.deployed import load_deployed
from qnnrepair.localization.layer_costs import layer_costs
from qnnrepair.pipeline import prepare, prepare_deployed
from qnnrepair.repair import RepairConfig
from qnnrepair.repair.engine import fit_localizer

TOP = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50, help="validation images per table")
    parser.add_argument("--repair-images", type=int, default=64)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    args = parser.parse_args()
    lines = ["# Per-layer cost of deployed files", "",
             f"Command: `{command()}`  ", f"Machine: {machine()}", "",
             f"Each table: {TOP} layers that recover the most when left alone in float, of "
             "every quantized layer; accuracy in % on the validation images, KL = mean "
             "KL(float || model). `qnnrepair localize --quantized FILE ... --layer-images N` "
             "prints the same table for any file. For a `.tflite` file the float reference "
             "holds the file's own (dequantized) weights, so a layer alone in float computes "
             "what it computed quantized: its input is already on its grid and its weights are "
             "the same; the file's losses are the activation roundings between layers, which "
             "this swap does not remove. There the 'alone float' column reads the quantized "
             "model's numbers, and the blame share and the 'alone quantized' column (the float "
             "model with that layer's rounding) are the ones that tell layers apart.", ""]
    imagenet = args.shared / "data" / "imagenet"
    for name in ("mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite"):
        model = load_deployed(args.shared / "models" / "imagenet" / name)
        work = prepare_deployed(model, imagenet / "sample1000", imagenet / "nips17",
                                n_repair=args.repair_images)
        lines += _table(name, model, work, args.images)
    with tempfile.TemporaryDirectory() as folder:
        model, work = _resnet20_qdq(Path(folder), args)
        lines += _table("ResNet-20 QDQ (quantize_static, per tensor)", model, work, args.images)
    out = RESULTS / "layer_costs.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def _table(title: str, model, work, n_images: int) -> list[str]:
    images, labels = work.images("validation"), work.labels("validation")
    chosen = spread(len(images), n_images)
    localizer = fit_localizer(model, work.images("repair"), work.labels("repair"),
                              RepairConfig())
    table = layer_costs(model, images[chosen], labels[chosen], localizer.scores_,
                        show_progress=True)
    print(table.to_text(top=TOP), flush=True)
    return [f"## {title}", "", "```", table.to_text(top=TOP), "```", ""]


def _resnet20_qdq(folder: Path, args):
    cifar = args.shared / "data" / "cifar10"
    work = prepare("resnet20", args.shared / "models" / "cifar10-resnet20.th",
                   cifar / "train30k.npz", cifar / "test.npz", n_repair=256)
    float_path, qdq_path = folder / "resnet20.onnx", folder / "resnet20.qdq.onnx"
    export_float(work.model, work.images("repair")[:1], float_path)
    quantize_qdq(float_path, qdq_path, work.images("repair"), per_channel=False)
    model = load_deployed(qdq_path, float_path)
    mean, std = work.info.mean, work.info.std
    deployed = prepare_deployed(model, cifar / "train30k.npz", cifar / "test.npz",
                                n_repair=args.repair_images, mean=mean, std=std)
    return model, deployed


if __name__ == "__main__":
    main()
