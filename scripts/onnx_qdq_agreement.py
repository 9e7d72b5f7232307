"""Agreement of the ONNX QDQ simulation with ONNX Runtime on CIFAR-10 test images (a development
check), before and after a change of integers.

Usage: OMP_NUM_THREADS=1 python scripts/onnx_qdq_agreement.py N [resnet20,mobilenetv2] [folder]
Exports each zoo model to float ONNX (BatchNorm folded by the exporter), quantizes it with ONNX
Runtime's quantize_static (QDQ, int8, per tensor and per channel; 256 calibration images from
train30k), loads both with load_onnx_qdq, and prints top-1 agreement with ORT as written
(no optimizations) and fused (all optimizations), then again after a change of integers (one
hidden conv channel's weights +1 step where the grid allows, head bias +1 logit on class 3)
written with write_qdq.
"""

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from qnnrepair.data import load_dataset, to_tensor
from qnnrepair.formats.onnx_qdq import load_onnx_qdq, write_qdq
from qnnrepair.models import load_model, model_info

WEIGHTS = {"resnet20": "../shared/models/cifar10-resnet20.th",
           "mobilenetv2": "models/cifar10-mobilenetv2.pt"}
CIFAR = "../shared/data/cifar10/"


def ort_logits(path, x, level):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 250].numpy()})[0]
                           for i in range(0, len(x), 250)])


def simulate(graph, x):
    with torch.no_grad():
        return torch.cat([graph(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()


def main() -> None:
    torch.set_num_threads(1)
    n = int(sys.argv[1])
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(WEIGHTS)
    folder = Path(sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp())
    test = load_dataset(CIFAR + "test.npz", split="test")
    for name in names:
        info = model_info(name)
        x = to_tensor(test.images[:n], info.mean, info.std)
        labels = test.labels[:n]
        calib = to_tensor(load_dataset(CIFAR + "train30k.npz").images[:256], info.mean, info.std)
        float_path = folder / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(load_model(name, WEIGHTS[name]).eval(), (x[:1],), str(float_path),
                              dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        for per_channel in (False, True):
            class Reader(CalibrationDataReader):
                batches = iter([{"input": calib[i:i + 32].numpy()} for i in range(0, 256, 32)])

                def get_next(self):
                    return next(self.batches, None)

            qdq = folder / f"{name}.{'channel' if per_channel else 'tensor'}.qdq.onnx"
            quantize_static(str(float_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel)
            start = time.time()
            model = load_onnx_qdq(float_path, qdq)
            changed = model.copy()
            conv = changed.layer(changed.layers[len(changed.layers) // 2])
            conv.weight_int[0] = torch.clamp(conv.weight_int[0] + 1, conv.qmin, conv.qmax)
            head = changed.layer(changed.layers[-1])
            head.bias_int[3] += int(1.0 / float(head.bias_scale()[3]))
            out = folder / f"{qdq.stem}.changed.onnx"
            write_qdq(qdq, changed, out)
            for what, m, path in (("as quantized", model, qdq), ("after change", changed, out)):
                sim = simulate(m.model, x)
                line = [f"{name} {'per-channel' if per_channel else 'per-tensor'} {what}:"]
                for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
                    ref = ort_logits(path, x, level)
                    agree = (sim.argmax(1) == ref.argmax(1)).mean()
                    same = (np.abs(sim - ref).max(1) <= 1e-5).mean()
                    line.append(f"{level[4:].lower()} agree={agree:.2%} identical={same:.1%} "
                                f"acc_ort={(ref.argmax(1) == labels).mean():.2%}")
                line.append(f"acc_sim={(sim.argmax(1) == labels).mean():.2%}")
                print(" ".join(line), flush=True)
            flt = simulate(model.float_model, x)
            gap = np.abs(flt - ort_logits(float_path, x, "ORT_DISABLE_ALL")).max()
            print(f"{name}: float reference acc={(flt.argmax(1) == labels).mean():.2%}, max "
                  f"|diff| to ORT float {gap:.1e} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
