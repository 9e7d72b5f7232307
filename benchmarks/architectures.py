"""The architecture table: every step of qnnrepair on models as timm and torchvision write them.

    python benchmarks/architectures.py                 # all, resuming from the JSON
    python benchmarks/architectures.py --only resnet18 --fresh
    python benchmarks/architectures.py --onnx          # the ONNX files table instead

Writes benchmarks/results/architectures.json (one row per architecture, kept between runs so an
interrupted run resumes) and the tables in docs/ARCHITECTURES.md: qnnrepair's own quantizer on
each model, and (--onnx) the ONNX files a user makes of it (torch.onnx export, TorchScript and
dynamo exporters, then ONNX Runtime's quantize_static per tensor and per channel) loaded,
checked against ONNX Runtime and repaired. Needs the `models` extra (and onnxscript for the
dynamo exporter).
Models have random weights (qnnrepair.architectures.build_architecture); the images are
Gaussian noise at 64x64, 32 of them (16 calibrate and repair, 16 validate).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

import torch

from qnnrepair.architectures import (
    ARCHITECTURES,
    EXPORTERS,
    QDQ_STEPS,
    STEPS,
    build_architecture,
    check_architecture,
    check_onnx_files,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "architectures.json"
DOC = ROOT / "docs" / "ARCHITECTURES.md"
COMMAND = "python benchmarks/architectures.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(ARCHITECTURES))
    parser.add_argument("--fresh", action="store_true", help="rerun rows already in the JSON")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--onnx", action="store_true", help="the ONNX files table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("quantizer", {})
    results.setdefault("onnx", {})
    jobs = [(name, exporter) for name in args.only or ARCHITECTURES
            for exporter in (EXPORTERS if args.onnx else (None,))]
    for name, exporter in jobs:
        table, key = ("onnx", f"{name}/{exporter}") if args.onnx else ("quantizer", name)
        if key in results[table] and not args.fresh:
            continue
        start = time.perf_counter()
        model = build_architecture(name, size=args.size)
        images = torch.randn(args.images, 3, args.size, args.size,
                             generator=torch.Generator().manual_seed(1))
        row = (check_onnx_files(model, images, exporter) if args.onnx
               else check_architecture(model, images))
        row["seconds"] = round(time.perf_counter() - start, 1)
        results[table][key] = row
        print(key, row, flush=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    DOC.write_text(render(results))


def render(results: dict) -> str:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    lines = [
        "# Architectures",
        "",
        "Every step of qnnrepair on models as timm and torchvision write them: random weights "
        "(nothing downloaded), BatchNorm statistics averaged over three train-mode passes on "
        "random images, classifier bias centred so that predictions spread over the 10 classes; "
        "32 Gaussian-noise images of 64x64 (16 calibrate and repair, 16 validate), labels = "
        "the float model's own top-1. Written by "
        f"`{COMMAND}` (revision {revision}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads).",
        "",
        "- **float**: the BN-folded float model against the model's own output (largest "
        "difference relative to the largest logit). The quantizer's self-check already "
        "requires 1e-3.",
        "- **w8a8 / w4a8**: quantization (per-channel weights), number of quantized layers.",
        "- **agreement**: W8A8 top-1 equal to float, in % of the 32 images. Random weights "
        "and noise images leave small margins between the logits, so per-tensor activation "
        "rounding flips many top-1s of the mobile networks; with real weights "
        "(EfficientNet-Lite1 on ImageNet images, `tests/models/test_efficientnet_lite.py`) W8A8 "
        "keeps the float top-1 on at least 95 % of the images.",
        "- **gradient / ochiai**: `localize` with each metric at W4A8, the top neuron.",
        "- **repair**: the default repair at W4A8 for at most 2 neurons; neurons kept by the "
        "guard and validation accuracy (against the float labels) before and after.",
        "- **onnx**: W8A8 exported as ONNX QDQ and run in ONNX Runtime; top-1 agreement "
        "with the simulation.",
        "",
        "A `refused:` cell is qnnrepair's one-line message; `not qnnrepair:` a failure of "
        "torch.onnx or ONNX Runtime's quantizer before qnnrepair sees a file; a `crash:` cell "
        "would be a bug of qnnrepair.",
        "",
        "| architecture | " + " | ".join(STEPS) + " | total s |",
        "|---|" + "---|" * (len(STEPS) + 1),
    ]
    rows = results["quantizer"]
    for name in ARCHITECTURES:
        if name not in rows:
            continue
        library, arch = ARCHITECTURES[name]
        row = rows[name]
        cells = [str(row.get(step, "")).replace("|", "/") for step in STEPS]
        lines.append(f"| {library} `{arch}` | " + " | ".join(cells) + f" | {row['seconds']} |")
    lines += [
        "",
        "## ONNX files as users make them",
        "",
        "The same models (same weights and images) exported by `torch.onnx.export` (opset 17, "
        "dynamic batch; the TorchScript exporter and the dynamo one), quantized by ONNX "
        "Runtime's `quantize_static` (QDQ, MinMax, uint8 activations, int8 weights, calibrated "
        "on 16 images) per tensor and per channel, then `--quantized model.qdq.onnx "
        "--float-model model.onnx` as `repair` loads them: the number of quantized layers, the "
        "share of the 32 images on which ONNX Runtime (default optimizations) and qnnrepair's "
        "simulation give the same top-1, before and after a repair of at most 2 neurons (the "
        "repaired file as written), and how many neurons the guard kept. Written by "
        f"`{COMMAND} --onnx`.",
        "",
        "| architecture | exporter | " + " | ".join(QDQ_STEPS) + " | total s |",
        "|---|---|" + "---|" * (len(QDQ_STEPS) + 1),
    ]
    for key, row in results["onnx"].items():
        name, exporter = key.split("/")
        library, arch = ARCHITECTURES[name]
        cells = [str(row.get(step, "")).replace("|", "/") for step in QDQ_STEPS]
        lines.append(f"| {library} `{arch}` | {exporter} | " + " | ".join(cells)
                     + f" | {row['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
