"""Where the QDQ simulation and ONNX Runtime first part ways: every node output of a QDQ model,
simulated and run by ONNX Runtime as written (graph optimizations off), on random inputs; prints
the first nodes whose outputs differ and on what share of their values, then how the graph
output differs (a development check).

Usage: python scripts/onnx_qdq_first_difference.py FLOAT.onnx QDQ.onnx [--images 2]
           [--range LO HI] [--integers] [--show 12]

`--range`/`--integers`: the inputs, uniform in [LO, HI] (default -2 2), rounded to integers for
a model whose input is stored pixels (a TFLite float reference exported to ONNX). The E7 pair
of README.md came from benchmarks/experiments/e7_imagenet.py's `_ort_quantized` (the uint8
MobileNetV2's float reference, ORT's quantize_static on 100 sample1000 images), run with
`--range 0 255 --integers`.
"""

import argparse

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qnnrepair.formats.onnx_qdq import load_onnx_qdq


def simulated_values(graph, x: torch.Tensor) -> dict[str, np.ndarray]:
    values = {graph.input_name: x}
    with torch.no_grad():
        for key, inputs, out in graph.wiring:
            values[out] = graph.nodes[key](*[values[i] for i in inputs])
    return {name: v.numpy() for name, v in values.items()}


def runtime_values(qdq_path: str, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    model = onnx.load(qdq_path)
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    del model.graph.output[:]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            name, types.get(name, onnx.TensorProto.FLOAT), None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(names, {session.get_inputs()[0].name: x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_model")
    parser.add_argument("qdq_model")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--range", type=float, nargs=2, default=(-2.0, 2.0))
    parser.add_argument("--integers", action="store_true")
    parser.add_argument("--show", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    graph = load_onnx_qdq(args.float_model, args.qdq_model).model
    shape = [d.dim_value or args.images for d in
             onnx.load(args.qdq_model).graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(*args.range, size=shape).astype(np.float32)
    if args.integers:
        x = np.round(x)
    mine = simulated_values(graph, torch.from_numpy(x))
    steps = [(key, out) for key, _, out in graph.wiring if ":" not in out]  # file values only
    theirs = runtime_values(args.qdq_model, [out for _, out in steps], x)
    shown = 0
    for (key, out), value in zip(steps, theirs):
        diff = np.abs(mine[out] - value.astype(np.float32))
        share = float((diff > 1e-4 * (np.abs(value).max() + 1e-9)).mean())
        if share > 0 and shown < args.show:
            print(f"{key:45s} {type(graph.nodes[key]).__name__:14s} differ on {share:.2e} of "
                  f"{diff.size} values, max {diff.max():.4g}")
            shown += 1
    if shown == 0:
        print(f"all {len(steps)} node outputs agree")
    last = dict(zip((out for _, out in steps), theirs))[graph.output_name].astype(np.float32)
    rows = np.abs(mine[graph.output_name] - last).reshape(len(x), -1).max(axis=1)
    same = (mine[graph.output_name].reshape(len(x), -1).argmax(1)
            == last.reshape(len(x), -1).argmax(1))
    print(f"graph output: differs on {int((rows > 0).sum())} of {len(x)} inputs (largest "
          f"{rows.max():.4g}), same top-1 on {int(same.sum())}")


if __name__ == "__main__":
    main()
