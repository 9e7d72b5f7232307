"""The `qnnrepair` command. The only package that prints or configures logging.

    __init__.py   the parser and main(); options.py  shared options, configs,
    workloads; commands.py  demo ... train; bench.py  bench and --merge

Every failure caused by input is one line on stderr and exit code 2; Ctrl-C is exit 130. Output
files are written whole (temporary file, then rename) or not at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from qnnrepair.cli.bench import cmd_bench
from qnnrepair.cli.commands import (
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_localize,
    cmd_quantize,
    cmd_repair,
    cmd_train,
)
from qnnrepair.cli.options import add_data, add_norm, add_quant, add_repair, add_size
from qnnrepair.errors import QnnRepairError
from qnnrepair.memory import keep_freed_memory

logger = logging.getLogger("qnnrepair")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnnrepair", description=(
        "Repair quantized neural networks: blame localization + linear programs on "
        "integer weights, guarded by validation."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="repair the embedded ResNet-20 on embedded CIFAR-10 images")
    p.add_argument("--setting", default="w3a8", help="quantization setting (default w3a8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("quantize", help="quantize a float model and write the quantized file")
    add_data(p)
    add_quant(p)
    p.add_argument("--output", type=Path, help="quantized model file to write")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="float and quantized accuracy on every split")
    add_data(p)
    add_quant(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("localize", help="rank neurons by suspiciousness")
    add_data(p)
    add_quant(p)
    add_repair(p)
    p.add_argument("--top", type=int, default=20, help="how many neurons to print")
    p.add_argument("--output", type=Path, help="write the full ranking as JSON")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("repair", help="repair a quantized model; writes model, report, summary")
    add_data(p)
    add_quant(p)
    add_repair(p)
    p.add_argument("--output", type=Path, help="repaired model file to write (.qnn; a "
                   "deployed input is written as a file of its own kind: .tflite, .onnx)")
    p.add_argument("--report-html", type=Path, metavar="PATH",
                   help="also write the report as one self-contained HTML page (plots, tables)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("bench", help="every method side by side on the same data; writes a "
                       "Markdown table, JSON and a PNG plot")
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=FILE",
                   help="model spec (zoo name, package.module:factory or path/file.py:factory; "
                   "importing it runs its code) and its float checkpoint (repeatable)")
    add_norm(p)
    p.add_argument("--data", type=Path, help="training-split data (R)")
    p.add_argument("--test-data", type=Path, help="held-out data: V and T are drawn "
                   "from it, disjointly")
    p.add_argument("--settings", nargs="+", help="default: w8a8 w4a8 w3a8 w4a4")
    add_size(p)
    p.add_argument("--n-repair", type=int, default=1000)
    p.add_argument("--n-validation", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="W4A4 only, 2,000 test images, AdaRound 200 iterations, no paper preset, "
                   "qnnrepair on top of AdaRound only")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods to run, in table order (default: every registered one)")
    p.add_argument("--on-top", nargs="*", metavar="METHOD",
                   help="baselines that qnnrepair is also stacked on (default: those of "
                   "bias_correction squant adaround qdrop that run); give none for no stacked "
                   "rows")
    p.add_argument("--output", type=Path, default=Path("benchmarks/results"),
                   help="folder for the results (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file stem (default bench)")
    p.add_argument("--fresh", action="store_true",
                   help="start again; by default a run skips the (model, setting) pieces "
                   "already in <name>.json, so a long matrix can be split into invocations")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="write one table from runs split into files (e.g. one model per "
                   "process, each with its own --name); runs nothing")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train a zoo model from scratch (SGD, one-cycle, crop + "
                       "flip); writes its state dict and a per-epoch log")
    p.add_argument("--model", help="zoo name (conv3, conv5, vgg, resnet20, mobilenetv2, ...)")
    p.add_argument("--train", "--data", dest="train", type=Path, help="training data")
    p.add_argument("--test", "--test-data", dest="test", type=Path,
                   help="test data, scored after every epoch")
    p.add_argument("--out", "--output", dest="out", type=Path,
                   help="weights file to write (state dict); the log goes beside it as "
                   "NAME.log.jsonl")
    add_size(p)
    p.add_argument("--epochs", type=int, default=30, help="default 30 (small models on a CPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak one-cycle learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0,
                   help="weights, shuffling and augmentation: same seed, same device, same weights")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N; CUDA runs with deterministic algorithms "
                   "and CUBLAS_WORKSPACE_CONFIG=:4096:8")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a quantized model as ONNX QDQ; check it in ONNX "
                       "Runtime on the test split when --data is given")
    add_data(p)
    p.add_argument("--output", type=Path, help="ONNX file to write")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by bench beside its results
    keep_freed_memory()  # large activation buffers reused, not mapped afresh (memory.py)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QnnRepairError as err:
        print(f"qnnrepair: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qnnrepair: interrupted; no output file was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
