"""Where the accuracy of 4-bit ImageNet mobile networks goes: E7's diagnosis.

    python benchmarks/experiments/e7_diagnosis.py [--models quant ptq lite1] [--variants ...]
        [--layer-images 50] [--fresh | --render]

For each float model (the float references of the two shared MobileNetV2 .tflite files, and
EfficientNet-Lite1 with its real weights) the same R / V / T as E7 (R = sample1000, V and T
disjoint halves of nips17, seed 0), and variants of the project's quantization, evaluated as
fake quantization on the folded float network: every Conv/Linear computes
`conv(input on its A-bit grid or float, weights on a grid or float) + float bias`. Activation
grids are the quantizer's (per tensor, asymmetric, min/max on all of R); weight grids:

- `maxabs`: symmetric per output channel, scale max|w| / qmax (the quantizer's default);
- `mse`: symmetric per channel, the scale that minimizes the weights' squared error;
- `asym`: asymmetric per channel on [min w, max w] (2^b levels with a zero point);
- `-pt`: one scale per tensor.

First and last layer stay at 8 bits unless the row says otherwise. The row "W4A8 (integer
model)" is the quantizer's own integer model (RTN, E7's `rtn` row), beside the fake-quantized
W4A8 maxabs row that should match it. Then, per layer, the W4A8 model with that layer alone left
in float (`alone float`), the float model with that layer alone at W4A8 (`alone quantized`) and
its share of the gradient blame, on `--layer-images` images of V (localization.layer_costs).
Writes benchmarks/results/experiments/e7_diagnosis.{md,json}; rows are saved as they finish and
a rerun resumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from _shared import Clock, arguments, commands, header, meta, results, write
from common import git_revision

from qnnrepair.data.splits import spread
from qnnrepair.evaluation import accuracy
from qnnrepair.formats.deployed import load_deployed
from qnnrepair.localization.layer_costs import layer_costs
from qnnrepair.pipeline import prepare, prepare_deployed
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.quantization.primitives import weight_qmax, weight_scale
from qnnrepair.repair import RepairConfig
from qnnrepair.repair.engine import fit_localizer

NAME = "e7_diagnosis"
MODELS = {"quant": "mobilenet_v2_1.0_224_quant.tflite (float reference)",
          "ptq": "tf2_mobilenet_v2_1.0_224_ptq.tflite (near-float Keras weights)",
          "lite1": "EfficientNet-Lite1 (efficientnet-lite-pytorch, BN folded)"}
# name -> (weight bits or None for float, grid, act bits or None, first/last at 8, kinds at 8)
VARIANTS = {
    "float": (None, "maxabs", None, True, ()),
    "W4A8 maxabs": (4, "maxabs", 8, True, ()),
    "W4 maxabs, A float": (4, "maxabs", None, True, ()),
    "W float, A8": (None, "maxabs", 8, True, ()),
    "W8A8 maxabs": (8, "maxabs", 8, True, ()),
    "W4A8 mse": (4, "mse", 8, True, ()),
    "W4A8 asym": (4, "asym", 8, True, ()),
    "W4 mse, A float": (4, "mse", None, True, ()),
    "W4 asym, A float": (4, "asym", None, True, ()),
    "W4A8 maxabs-pt": (4, "maxabs-pt", 8, True, ()),
    "W4A8 maxabs, first/last at 4": (4, "maxabs", 8, False, ()),
    "W4A8 maxabs, depthwise at 8": (4, "maxabs", 8, True, ("depthwise",)),
    "W4A8 maxabs, pointwise + dense at 8": (4, "maxabs", 8, True, ("pointwise",)),
    "W8A8 maxabs-pt": (8, "maxabs-pt", 8, True, ()),
    "W8-pt, A float": (8, "maxabs-pt", None, True, ()),
}

EXTRA = ("W4A8 (integer model)", "per layer")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, *EXTRA],
                        choices=[*VARIANTS, *EXTRA], metavar="VARIANT")
    parser.add_argument("--layer-images", type=int, default=50)
    parser.add_argument("--n-validation", type=int, default=500)
    args = parser.parse_args()
    rows = results(NAME, args.fresh)
    m = meta(n_validation=args.n_validation, layer_images=args.layer_images)
    if not args.render:
        for key in args.models:
            _run_model(key, args, rows, m)
    render(rows.rows, m)


def _run_model(key: str, args, rows, m: dict) -> None:
    pending = [v for v in args.variants if not rows.has(model=key, variant=v)]
    if not pending:
        return
    work = _workload(key, args)
    rtn = quantize(work.model, QuantConfig.from_setting("w4a8"), work.images("repair"),
                   model_spec=work.model_spec, seed=0)
    for variant in pending:
        print(f"{key} {variant} ...", file=sys.stderr, flush=True)
        with Clock() as clock:
            if variant == "W4A8 (integer model)":
                result = _accuracies(rtn.model, work)
            elif variant == "per layer":
                result = _per_layer(rtn, work, args.layer_images)
            else:
                with _fake_quantized(rtn, *VARIANTS[variant]):
                    result = _accuracies(rtn.model, work)
        rows.add({"model": key, "variant": variant, "result": result, "cpu_s": clock.cpu,
                  "splits": work.split_description, "command": m["command"],
                  "revision": git_revision(), "at": time.strftime("%H:%M")}, m)


def _workload(key: str, args):
    data = args.shared / "data" / "imagenet"
    if key == "lite1":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from efficientnet_lite import lite1

        return prepare("benchmarks/efficientnet_lite.py:lite1", None, data / "sample1000",
                       data / "nips17", n_validation=args.n_validation, num_classes=1000,
                       model=lite1(), mean=(0.5,) * 3, std=(0.5,) * 3)
    name = MODELS[key].split()[0]
    deployed = load_deployed(args.shared / "models" / "imagenet" / name)
    work = prepare_deployed(deployed, data / "sample1000", data / "nips17",
                            n_validation=args.n_validation)
    return work


def _accuracies(model, work) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in ("validation", "test")}


class _fake_quantized:
    """Every layer of `qmodel.model` computes with its folded float weights on a weight grid
    (or in float) and its input on its activation grid (or in float), as the variant says."""

    def __init__(self, qmodel, bits, grid, act_bits, first_last_8, kinds_at_8) -> None:
        self.qmodel, self.layers = qmodel, qmodel.layers
        self.rule = (bits, grid, act_bits, first_last_8, kinds_at_8)

    def __enter__(self):
        bits, grid, act_bits, first_last_8, kinds_at_8 = self.rule
        for i, name in enumerate(self.layers):
            layer, twin = self.qmodel.layer(name), self.qmodel.float_layer(name)
            edge = first_last_8 and i in (0, len(self.layers) - 1)
            kind = ("depthwise" if getattr(layer, "groups", 1) > 1 else "pointwise")
            w_bits = 8 if bits is not None and (edge or kind in kinds_at_8) else bits
            weight = twin.weight.detach() if w_bits is None else _on_grid(twin.weight.detach(),
                                                                         w_bits, grid)
            bias = None if twin.bias is None else twin.bias.detach()
            quantize_input = act_bits is not None

            def forward(x, layer=layer, weight=weight, bias=bias, q=quantize_input):
                return layer.kernel(layer.quantize_input(x) if q else x, weight, bias)
            layer.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        for name in self.layers:
            del self.qmodel.layer(name).forward  # back to the class's forward


def _on_grid(w: torch.Tensor, bits: int, grid: str) -> torch.Tensor:
    """`w` rounded to a `bits`-bit grid of the given kind (see the module docstring)."""
    if grid == "asym":
        flat = w.reshape(len(w), -1)
        lo, hi = flat.min(dim=1).values.clamp(max=0), flat.max(dim=1).values.clamp(min=0)
        levels = 2**bits - 1
        scale = ((hi - lo) / levels).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(flat / scale[:, None]) + zero[:, None], 0, levels)
        return ((q - zero[:, None]) * scale[:, None]).reshape(w.shape)
    per_channel = not grid.endswith("-pt")
    s = weight_scale(w, bits, per_channel, grid.removesuffix("-pt"))
    s = s.reshape((-1,) + (1,) * (w.dim() - 1))
    qmax = weight_qmax(bits)
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def _per_layer(rtn, work, n_images: int) -> list[dict]:
    images, labels = work.images("validation"), work.labels("validation")
    chosen = spread(len(images), n_images)
    localizer = fit_localizer(rtn, work.images("repair"), work.labels("repair"), RepairConfig())
    table = layer_costs(rtn, images[chosen], labels[chosen], localizer.scores_,
                        show_progress=True)
    return table.to_dict()


SUMMARY = (("4-bit weights, A float", "W4 maxabs, A float"),
           ("8-bit activations, W float", "W float, A8"),
           ("W8A8", "W8A8 maxabs"),
           ("W4A8 max-abs grid", "W4A8 maxabs"), ("W4A8 MSE grid", "W4A8 mse"),
           ("W4A8 asymmetric grid", "W4A8 asym"),
           ("W8A8, weights per tensor", "W8A8 maxabs-pt"))


def _summary(rows: list[dict]) -> list[str]:
    """One line per model: T points below float for each cause the variants isolate; from the
    per-layer rows (V images), the most one layer left in float recovers and the most one layer
    alone at W4A8 costs."""
    lines = ["## Where the points go (T, points from float)", "",
             "| model | float T | " + " | ".join(n for n, _ in SUMMARY)
             + " | best single layer in float (V) | worst single layer at W4A8 (V) |",
             "|---|---|" + "---|" * (len(SUMMARY) + 2)]
    for key in MODELS:
        test = {r["variant"]: r["result"] for r in rows if r["model"] == key}
        if "float" not in test:
            continue
        base = test["float"]["test"]
        cells = [f"{test[v]['test'] - base:+.1f}" if v in test else "-" for _, v in SUMMARY]
        layers = test.get("per layer")
        best = worst = "-"
        if layers:
            top = max(layers["layers"], key=lambda r: r["recovers"])
            best = f"{top['layer']} {top['recovers']:+.1f}"
            low = min(layers["layers"], key=lambda r: r["quantized_accuracy"])
            worst = f"{low['layer']} {low['quantized_accuracy'] - layers['float_accuracy']:+.1f}"
        lines.append(f"| {key} | {base:.1f} | " + " | ".join(cells) + f" | {best} | {worst} |")
    return lines + [""]


def render(rows: list[dict], m: dict) -> None:
    what = ("Top-1 (%) on V and T (E7's splits) of fake-quantized variants of each float model "
            "(see the script's docstring); 'per layer': the ten layers whose rounding costs most, "
            "on the first images of V.")
    lines = header("E7 diagnosis: where the accuracy of W4A8 goes", m, what)
    lines[4:5] = commands(rows, "", with_revisions=True)
    lines += _summary(rows)
    for key, title in MODELS.items():
        block = [r for r in rows if r["model"] == key]
        if not block:
            continue
        lines += [f"## {title}", "", f"Splits: {block[0]['splits']}", "",
                  "| variant | V | T | T - float | CPU s |", "|---|---|---|---|---|"]
        base = next((r["result"]["test"] for r in block if r["variant"] == "float"), None)
        for r in block:
            if r["variant"] == "per layer":
                continue
            t = r["result"]["test"]
            gap = f"{t - base:+.1f}" if base is not None else "-"
            lines.append(f"| {r['variant']} | {r['result']['validation']:.1f} | {t:.1f} | "
                         f"{gap} | {r['cpu_s']:.0f} |")
        costs = next((r["result"] for r in block if r["variant"] == "per layer"), None)
        if costs:
            lines += ["", f"Per layer on {costs['n_images']} images of V: float "
                      f"{costs['float_accuracy']:.1f}, W4A8 {costs['quantized_accuracy']:.1f}.",
                      "", "| layer | recovers (points) | alone float | alone quantized | "
                      "blame share |", "|---|---|---|---|---|"]
            for row in sorted(costs["layers"], key=lambda r: -r["recovers"])[:10]:
                share = "-" if row["blame_share"] is None else f"{row['blame_share']:.3f}"
                lines.append(f"| {row['layer']} | {row['recovers']:+.1f} | "
                             f"{row['float_accuracy']:.1f} | {row['quantized_accuracy']:.1f} | "
                             f"{share} |")
        lines.append("")
    write(NAME, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
