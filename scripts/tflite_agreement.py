"""Agreement of the TFLite simulation with LiteRT on shared ImageNet images (a development check).

Usage: OMP_NUM_THREADS=1 python scripts/tflite_agreement.py N [nips17|sample1000] [name,...]
Prints, per model: top-1 agreement, share of identical output vectors, and top-1 of LiteRT,
the simulation and the float reference (class = argmax - 1).
"""

import csv
import sys
import time

import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from qnnrepair.formats.tflite import load_tflite

MODELS = "../shared/models/imagenet/"
DEFAULT = ["mobilenet_v2_1.0_224_quant", "tf2_mobilenet_v2_1.0_224_ptq"]


def main() -> None:
    torch.set_num_threads(1)
    n = int(sys.argv[1])
    root = f"../shared/data/imagenet/{sys.argv[2] if len(sys.argv) > 2 else 'nips17'}/"
    with open(root + "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    imgs = np.stack([np.asarray(Image.open(root + r["file"]).convert("RGB")) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    for name in sys.argv[3].split(",") if len(sys.argv) > 3 else DEFAULT:
        path = f"{MODELS}{name}.tflite"
        it = Interpreter(path, num_threads=1)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        ref = []
        for img in imgs:
            it.set_tensor(inp["index"], img[None])
            it.invoke()
            ref.append(it.get_tensor(out["index"])[0].copy())
        ref = np.array(ref).astype(np.int64)
        model = load_tflite(path)
        start = time.time()
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
        with torch.no_grad():
            sim = torch.cat([model.model(x[s:s + 25]) for s in range(0, n, 25)]).numpy()
            flt = torch.cat([model.float_model(x[s:s + 25]) for s in range(0, n, 25)]).numpy()
        seconds = time.time() - start
        scale, zero_point = out["quantization"]
        simq = np.round(sim / scale).astype(np.int64) + zero_point
        agree = simq.argmax(1) == ref.argmax(1)
        exact = (simq == ref).all(axis=1)
        top1 = [np.mean(a.argmax(1) - 1 == labels) * 100 for a in (ref, simq, flt)]
        print(f"{name}: n={n} agree={agree.mean():.2%} identical={exact.mean():.2%} "
              f"max|diff|={np.abs(simq - ref).max()} top1 litert={top1[0]:.1f} "
              f"sim={top1[1]:.1f} float={top1[2]:.1f} (torch {seconds:.0f} s)")


if __name__ == "__main__":
    main()
