"""How fast the integer simulation of a deployed file runs, beside the runtime itself.

    python benchmarks/simulation_speed.py [--images 100] [--threads 1] [--repeats 5]

For each shared MobileNetV2 .tflite file: CPU time per image of the simulation (what every
candidate evaluation of a repair runs: `evaluation.logits_of`, its default batch) and of LiteRT
(one image per invoke, its batch size 1) on the same images with the same number of threads,
median of `--repeats` paired runs, and their ratio; the top-1 agreement of the two on the
images checks that the fast path computes what LiteRT computes. Writes
benchmarks/results/simulation_speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_SHARED, RESULTS, command, machine

from qnnrepair.evaluation import logits_of
from qnnrepair.formats.deployed import load_deployed
from qnnrepair.memory import keep_freed_memory
from qnnrepair.pipeline import prepare_deployed

FILES = ("mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--allocator", choices=("cli", "default"), default="cli",
                        help="cli: large buffers kept for reuse, as the qnnrepair command runs "
                        "(memory.keep_freed_memory); default: the C library's defaults")
    args = parser.parse_args()
    if args.allocator == "cli":
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    lines = ["# Simulation speed of deployed files", "",
             f"Command: `{command()}`  ", f"Machine: {machine()}; load before: "
             f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", "",
             f"CPU ms per image on {args.images} sample1000 images, {args.threads} thread(s) "
             f"for both, median of {args.repeats} paired runs; allocator: {args.allocator}.",
             "",
             "| file | simulation ms/img | LiteRT ms/img | ratio | top-1 agreement |",
             "|---|---|---|---|---|"]
    for name in FILES:
        path = args.shared / "models" / "imagenet" / name
        model = load_deployed(path)
        work = prepare_deployed(model, args.shared / "data" / "imagenet" / "sample1000",
                                n_repair=args.images, n_validation=100)
        images = work.images("repair")
        interpreter = _interpreter(path, args.threads)
        sim, lite = [], []
        for _ in range(args.repeats):
            sim.append(_cpu_ms(logits_of, model.model, images) / len(images))
            lite.append(_cpu_ms(_litert_logits, interpreter, images) / len(images))
        agree = float((logits_of(model.model, images).argmax(1).numpy()
                       == _litert_logits(interpreter, images).argmax(1)).mean())
        s, r = statistics.median(sim), statistics.median(lite)
        row = f"| {name} | {s:.1f} | {r:.1f} | {s / r:.2f} | {100 * agree:.1f} % |"
        print(row, flush=True)
        lines.append(row)
    out = RESULTS / "simulation_speed.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def _cpu_ms(run, *args) -> float:
    start = time.process_time()
    run(*args)
    return 1000 * (time.process_time() - start)


def _interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _litert_logits(interpreter, images: torch.Tensor) -> np.ndarray:
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    pixels = images.permute(0, 2, 3, 1).round().numpy().astype(inp["dtype"])
    rows = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.float32))
    return np.stack(rows)


if __name__ == "__main__":
    main()
