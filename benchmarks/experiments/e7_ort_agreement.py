"""Why the guard scores ONNX QDQ candidates in ONNX Runtime: how often the simulation and
ONNX Runtime, with and without its graph optimizations, predict the same class on ImageNet.

    python benchmarks/experiments/e7_ort_agreement.py [--file quant] [--images 1000]

The QDQ model is E7's `ort` setting (the file's float reference through torch.onnx, then
ONNX Runtime's quantize_static, per tensor, MinMax on R; e7_imagenet._ort_quantized), on the
first `--images` held-out nips17 images (V then T). Reports the pairwise top-1 agreement of
the simulation, ONNX Runtime as it runs by default (all optimizations) and as written
(optimizations off), and which nodes ONNX Runtime's optimized graph still computes in float
(every node type of the optimized graph, counted). Writes
benchmarks/results/experiments/e7_ort_agreement.md.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import torch
from _shared import arguments, header, meta, write
from e7_imagenet import FILES, _ort_quantized

from qnnrepair.evaluation import logits_of
from qnnrepair.formats.deployed import load_deployed
from qnnrepair.formats.runtime import runtime_predictions
from qnnrepair.pipeline import prepare_deployed

NAME = "e7_ort_agreement"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--file", default="quant", choices=FILES)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    m = meta(file=args.file, images=args.images)
    data = args.shared / "data" / "imagenet"
    deployed = load_deployed(args.shared / "models" / "imagenet" / FILES[args.file])
    work = prepare_deployed(deployed, data / "sample1000", data / "nips17", n_repair=1000,
                            n_validation=500, seed=0)
    images = torch.cat([work.images("validation"), work.images("test")])[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        qdq = _ort_quantized(deployed, work, Path(tmp))
        top1 = {"simulation": logits_of(qdq.model, images).argmax(1).numpy(),
                "ONNX Runtime as run": runtime_predictions(qdq.path, images)[1],
                "ONNX Runtime as written": runtime_predictions(qdq.path, images, False)[1]}
        optimized = _optimized_node_types(qdq.path, Path(tmp) / "optimized.onnx")
    lines = header("E7: the QDQ simulation and ONNX Runtime, run and as written", m,
                   f"Top-1 agreement on {len(images)} held-out nips17 images (V then T) of "
                   f"E7's `ort` model ({FILES[args.file]}'s float reference quantized by "
                   "ONNX Runtime's quantize_static, QDQ, per tensor, MinMax on R). "
                   f"Load before: {os.getloadavg()[0]:.1f}.")
    lines += ["| pair | same top-1 |", "|---|---|"]
    names = list(top1)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lines.append(f"| {a} / {b} | {100 * float((top1[a] == top1[b]).mean()):.2f} % |")
    lines += ["", "Node types of the graph ONNX Runtime runs by default (its optimized graph): "
              + ", ".join(f"{op} {n}" for op, n in optimized.most_common()) + "."]
    write(NAME, "\n".join(lines) + "\n")
    print("\n".join(lines))


def _optimized_node_types(path: str, out: Path) -> collections.Counter:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(str(out)).graph.node)


if __name__ == "__main__":
    main()
