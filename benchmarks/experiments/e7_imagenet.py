"""E7 (the seed's ImageNet experiment): MobileNetV2 from the two deployed .tflite files.

    python benchmarks/experiments/e7_imagenet.py [--files quant ptq] [--settings own w4a8 ...]
        [--methods ...] [--n-repair 1000] [--n-validation 500] [--adaround-iters 1000]
        [--bc-images 64] [--adaround-images 256] [--fresh | --redo | --render]

R: `sample1000` (one ImageNet image per class). V and T: drawn disjointly from `nips17` (V
`--n-validation` images, T the rest; seed 0), so no decision sees T and V is held out.
Settings:

- `own`: each file at its own INT8, as deployed. "file" is the file unchanged; "qnnrepair" the
  default repair of the file itself (`qnnrepair repair --quantized FILE.tflite`), written back
  as a .tflite. Their V and T top-1 are LiteRT's (beside the simulation's).
- `ort`: the file's float reference exported to ONNX (torch.onnx) and quantized by ONNX
  Runtime's own `quantize_static` (QDQ, int8, per-tensor weights, MinMax calibration on R).
  "file" is that QDQ model, "qnnrepair" its default repair written back as QDQ (its guard
  scores candidates in ONNX Runtime); V and T also through ONNX Runtime (default
  optimizations). CPU s include the ONNX Runtime quantization.
- `w4a8`, `w8a8-pt`, ...: the file's float reference (its dequantized weights, float
  activations) re-quantized by qnnrepair's quantizer (per-channel weights unless `-pt`; first
  and last layer at 8 bits); methods as in the bench (RTN, bias correction, DFQ, GPTQ,
  SQuant, AdaRound, qnnrepair, and qnnrepair on top of GPTQ or AdaRound), numbers from the
  simulation.

Each (file, setting, method) runs in a fresh subprocess, so "peak MiB" (its ru_maxrss, data
and models included) is that method's own, except that "X+qnnrepair" shares the process of X
when both are run (X's row is saved with its peak before the repair starts). A row is saved as
soon as its method finishes, and an interrupted run resumes with the methods not yet in the
JSON. CPU seconds include the RTN quantization a method starts from, and for "+qnnrepair" rows
the method below it (as in the bench; run again in that process if X is not run beside it).
Rows keep which T images they classify correctly, and each block ends with every qnnrepair row
minus the block's best other row on T, paired on the same images, with its 95 % interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _shared import DEFAULT_SHARED, Clock, commands, header, meta, results, write
from common import git_revision

from qnnrepair.bench.config import BenchConfig
from qnnrepair.bench.methods import get_method
from qnnrepair.bench.paired import correct_string, paired_difference
from qnnrepair.evaluation import accuracy, predict
from qnnrepair.formats.deployed import load_deployed, write_deployed
from qnnrepair.formats.runtime import check_runtime, simulated_predictions
from qnnrepair.pipeline import prepare_deployed, run_repair
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import preset

NAME = "e7_imagenet"
FILES = {"quant": "mobilenet_v2_1.0_224_quant.tflite",
         "ptq": "tf2_mobilenet_v2_1.0_224_ptq.tflite"}
SETTINGS = ("own", "ort", "w4a8", "w8a8-pt")
DEPLOYED_SETTINGS = ("own", "ort")  # a file as deployed: its runtime's numbers too
# "file" (the file as it is) only in the setting "own"
METHODS = ("file", "qnnrepair", "rtn", "bias_correction", "dfq", "gptq", "squant", "adaround",
           "dfq+qnnrepair", "gptq+qnnrepair", "adaround+qnnrepair")
SPLITS = ("repair", "validation", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n-repair", type=int, default=1000)
    parser.add_argument("--n-validation", type=int, default=500)
    parser.add_argument("--adaround-iters", type=int, default=1000)
    parser.add_argument("--bc-images", type=int, default=64,
                        help="bias correction calibrates on this many of R, spread evenly "
                             "(its passes cost layers x images)")
    parser.add_argument("--adaround-images", type=int, default=256,
                        help="AdaRound calibrates on this many of R, spread evenly (it runs "
                             "the model up to each of its 53 layers on every image)")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier rows")
    parser.add_argument("--redo", action="store_true",
                        help="run the chosen methods again, replacing their earlier rows")
    parser.add_argument("--render", action="store_true", help="only rewrite md/png from JSON")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--piece", nargs=2, metavar=("FILE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.piece:
        print(json.dumps(run_piece(args, *args.piece)))
        return
    rows = results(args.name, args.fresh)
    if args.redo:
        rows.rows = [r for r in rows.rows if not (r["file"] in args.files and r["setting"]
                                                  in args.settings and r["method"] in args.methods)]
    m = meta(files=args.files, n_repair=args.n_repair, n_validation=args.n_validation,
             adaround_iters=args.adaround_iters, bc_images=args.bc_images,
             adaround_images=args.adaround_images)
    if not args.render:
        for key in args.files:
            for setting in args.settings:
                deployed = setting in DEPLOYED_SETTINGS
                methods = [m for m in args.methods
                           if (m in ("file", "qnnrepair") if deployed else m != "file")]
                pending = [m for m in methods if not rows.has(file=key, setting=setting, method=m)]
                for group in _groups(pending):
                    print(f"{key} {setting} {' '.join(group)} ...", file=sys.stderr, flush=True)
                    for row in child(args, key, setting, group):
                        rows.add({**row, "command": m["command"]}, m)
                        print(f"  {row['method']}: test {row['result']['test']:.2f}% "
                              f"({row['cpu_s']:.0f} CPU s, {row['peak_mib']:.0f} MiB)",
                              file=sys.stderr, flush=True)
    render(rows.rows, m, args.name)


def _groups(methods: list[str]) -> list[list[str]]:
    """One process per method, but "X+qnnrepair" joins X's when X runs too (X is not run twice)."""
    groups: list[list[str]] = []
    for method in methods:
        below = method.partition("+")[0]
        group = next((g for g in groups if "+" in method and g == [below]), None)
        if group is None:
            groups.append([method])
        else:
            group.append(method)
    return groups


def child(args, key: str, setting: str, methods: list[str]) -> list[dict]:
    """Methods in a fresh process: their own peak memory, nothing cached."""
    argv = [sys.executable, __file__, "--piece", key, setting, "--shared", str(args.shared),
            "--n-repair", str(args.n_repair), "--n-validation", str(args.n_validation),
            "--adaround-iters", str(args.adaround_iters), "--bc-images", str(args.bc_images),
            "--adaround-images", str(args.adaround_images), "--methods", *methods]
    done = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_piece(args, key: str, setting: str) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    path = args.shared / "models" / "imagenet" / FILES[key]
    data = args.shared / "data" / "imagenet"
    deployed = load_deployed(path)
    work = prepare_deployed(deployed, data / "sample1000", data / "nips17",
                            n_repair=args.n_repair, n_validation=args.n_validation, seed=0)
    base = {"file": key, "setting": setting, "splits": work.split_description,
            "float": _accuracies(deployed.float_model, work)}
    if setting == "own":
        return [{**base, **row} for row in _own(deployed, work, args.methods)]
    if setting == "ort":
        with tempfile.TemporaryDirectory() as tmp:  # the QDQ pair lives while its rows are made
            with Clock() as clock:
                qdq = _ort_quantized(deployed, work, Path(tmp))
            return [{**base, **row} for row in _own(qdq, work, args.methods, clock.cpu)]
    return [{**base, **row} for row in _requantized(work, setting, args)]


def _own(deployed, work, methods, base_cpu: float = 0.0) -> list[dict]:
    """The file as deployed ("file"), or repaired ("qnnrepair"); V and T also through its
    runtime. `base_cpu`: what making the file cost (ONNX Runtime's quantization), in both."""
    if "qnnrepair" not in methods:
        return [_row("file", deployed.model, work, None, Path(deployed.path), base_cpu)]
    with tempfile.TemporaryDirectory() as tmp:
        with Clock() as clock:
            result = run_repair(work, None, preset("default"), quantized=deployed)
        out = Path(tmp) / f"repaired{Path(deployed.path).suffix}"
        write_deployed(result.repaired, out)
        return [_row("qnnrepair", result.repaired.model, work, clock, out, base_cpu,
                     changed=len(result.repairer.changes_))]


def _ort_quantized(deployed, work, folder: Path):
    """Setting `ort`: the float reference through torch.onnx, then ONNX Runtime's
    quantize_static (QDQ, int8, per tensor, MinMax on R), read back as a QDQ simulation."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    float_path, qdq_path = folder / "float.onnx", folder / "qdq.onnx"
    images = work.images("repair")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(deployed.float_model.eval(), (images[:1],), str(float_path),
                          dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    class Repair(CalibrationDataReader):
        batches = iter([{"input": images[i:i + 10].numpy()} for i in range(0, len(images), 10)])

        def get_next(self):
            return next(self.batches, None)

    # MinMax keeps only each tensor's per-batch min and max (ReduceMin/Max outputs), so the
    # whole repair set fits; CalibMaxIntermediateOutputs would drop data (ORT 1.32 clears
    # without merging)
    quantize_static(str(float_path), str(qdq_path), Repair(), quant_format=QuantFormat.QDQ,
                    per_channel=False, calibrate_method=CalibrationMethod.MinMax)
    return load_deployed(qdq_path, float_path)


def _requantized(work, setting: str, args) -> list[dict]:
    config = BenchConfig(methods=tuple(m for m in args.methods if "+" not in m),
                         on_top=(), adaround_iters=args.adaround_iters,
                         baseline_params={"bias_correction": {"max_images": args.bc_images},
                                          "dfq": {"max_images": args.bc_images},
                                          "gptq": {"max_images": args.adaround_images},
                                          "adaround": {"max_images": args.adaround_images}})
    with Clock() as clock:
        rtn = quantize(work.model, QuantConfig.from_setting(setting), work.images("repair"),
                       model_spec=work.model_spec, seed=0)
    base_cpu = clock.cpu
    rows, finished = [], {}
    for name in args.methods:
        first, _, stacked = name.partition("+")
        if stacked and first not in finished:  # the method below, in this process too
            with Clock() as clock:
                below = get_method(first).run(rtn, work, setting, config)
            finished[first] = (below, clock.cpu + base_cpu)
        start, extra = (finished[first] if stacked else (rtn, base_cpu))
        with Clock() as clock:
            model = get_method(stacked or first).run(start, work, setting, config)
        finished[name] = (model, clock.cpu + extra)
        row = _row(name, model.model, work, clock, None, extra)
        rows.append(row)
        print(f"  {name}: test {row['result']['test']:.2f}%", file=sys.stderr, flush=True)
    return rows


def _row(method: str, model, work, clock, runtime_file: Path | None, base_cpu: float = 0.0,
         **extra) -> dict:
    predictions = {s: predict(model, work.images(s)) for s in SPLITS}
    correct = {s: predictions[s] == work.labels(s) for s in SPLITS}
    row = {"method": method,
           "result": {s: 100.0 * c.double().mean().item() for s, c in correct.items()},
           "test_correct": correct_string(correct["test"].tolist()),
           "cpu_s": (clock.cpu if clock else 0.0) + base_cpu,
           "wall_s": clock.wall if clock else 0.0,
           "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "revision": git_revision(), "load": os.getloadavg()[0], **extra}
    if runtime_file is not None:
        checks = {split: _runtime_checks(runtime_file, model, work, split)
                  for split in ("validation", "test")}
        row["runtime"] = {split: c[0].runtime_accuracy for split, c in checks.items()}
        row["agreement"] = {split: 100.0 * c[0].agreement for split, c in checks.items()}
        row["runtime_name"] = checks["test"][0].runtime
        if runtime_file.suffix == ".onnx":  # and the graph as written (no fused kernels)
            row["agreement_as_written"] = {split: 100.0 * c[1].agreement
                                           for split, c in checks.items()}
    return row


def _runtime_checks(path: Path, model, work, split: str) -> list:
    """The file in its runtime against the simulation (simulated once): default, and for ONNX
    also as written."""
    images, labels = work.images(split), work.labels(split)
    simulated = simulated_predictions(model, images)
    return [check_runtime(path, model, images, labels, optimized, simulated)
            for optimized in ((True, False) if path.suffix == ".onnx" else (True,))]


def _accuracies(model, work) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in SPLITS}


def render(rows: list[dict], m: dict, name: str) -> None:
    what = ("Top-1 (%) of MobileNetV2 on ImageNet images. R = sample1000 (one image per class), "
            "V and T disjoint halves of nips17 (see the split line per block). `own`: the file's "
            "own INT8, V/T runtime through LiteRT (simulation beside it); `ort`: ONNX Runtime's "
            "QDQ quantization of the float reference, V/T runtime through ONNX Runtime (the "
            "repair's guard scores its candidates in ONNX Runtime, default optimizations); "
            "agreement: images on which runtime and simulation predict the same class, for ONNX "
            "with ONNX Runtime's default graph optimizations (fused integer kernels) and as "
            "written (optimizations off; rows before it was kept show '-'); other settings: "
            "the file's float reference re-quantized by qnnrepair (simulation). CPU s include "
            "the RTN model a method starts from and, for '+qnnrepair', the method below it; wall s "
            "is the method alone (RTN's: a copy of the model). Peak MiB: the method's process "
            "(data, float evaluation and RTN included; LP worker processes not counted; "
            "'X+qnnrepair' ran in X's process, X's row has the peak before the repair). "
            f"Bias correction calibrates on {m['bc_images']} images of R, AdaRound "
            f"({m['adaround_iters']} iterations per layer, batches of 32) on "
            f"{m.get('adaround_images', 'all')} images of R, both spread evenly over R: "
            "each runs the model up to every layer on each of its images. Rows without a "
            "revision are from before it was kept (an earlier revision, other code).")
    lines = header("E7: MobileNetV2 on ImageNet (the seed's experiment)", m, what)
    lines[4:5] = commands(rows, EARLIER)
    blocks: dict[tuple, list[dict]] = {}
    def place(r):  # blocks by file and setting, rows by method, each in the order declared
        return (list(FILES).index(r["file"]), _index(SETTINGS, r["setting"]),
                _index(METHODS, r["method"]))

    for r in sorted(rows, key=place):
        blocks.setdefault((r["file"], r["setting"]), []).append(r)
    for (key, setting), block in blocks.items():
        f = block[0]["float"]
        lines += [f"## {FILES[key]}, {setting}", "",
                  f"Float reference: V {f['validation']:.2f}, T {f['test']:.2f}. "
                  f"Splits: {block[0]['splits']}", "",
                  "| method | V | T | V runtime | T runtime | agreement V / T | R | CPU s | "
                  "wall s | peak MiB | revision, load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in block:
            rt = r.get("runtime", {})
            lines.append(
                f"| {r['method']} | {r['result']['validation']:.2f} | "
                f"{r['result']['test']:.2f} | {_pct(rt.get('validation'))} | "
                f"{_pct(rt.get('test'))} | {_agreement(r)} | "
                f"{r['result']['repair']:.2f} | {r['cpu_s']:.0f} | "
                f"{_seconds(r.get('wall_s'))} | {r['peak_mib']:.0f} | "
                f"{r.get('revision', '-')}, {_load(r.get('load'))} |")
        lines += [""] + _paired(block)
    write(name, "\n".join(lines) + "\n", lambda plt: _plot(plt, blocks))


# Rows from before each row kept its command, as the notes of those runs say.
EARLIER = ("rows that carry no command were made by `python e7_imagenet.py --files quant ptq "
           "--settings own --methods file` and `--files quant --settings w4a8 --methods squant` "
           "(an earlier revision), `--files quant --settings w4a8 --methods bias_correction "
           "qnnrepair "
           "--redo` (74ed639) and `--methods rtn --redo` (f96b2bf)")


def _paired(block: list[dict]) -> list[str]:
    """Each qnnrepair row against the best other row on T (a baseline, or the file as it is),
    on the same images (rows that kept their per-image correctness only)."""
    kept = [r for r in block if "test_correct" in r]
    ours = [r for r in kept if "qnnrepair" in r["method"]]
    others = [r for r in kept if "qnnrepair" not in r["method"]]
    if not ours or not others:
        return []
    best = max(others, key=lambda r: r["result"]["test"])
    lines = []
    for r in ours:
        diff, half = paired_difference(r["test_correct"], best["test_correct"])
        lines.append(f"- {r['method']} - {best['method']} on T: {diff:+.1f} points "
                     f"(95 % interval {diff - half:+.1f} to {diff + half:+.1f}, paired, "
                     f"{len(r['test_correct'])} images)")
    return lines + [""]


def _agreement(row: dict) -> str:
    """V / T agreement with the runtime; for ONNX also with the graph as written."""
    def pair(a: dict) -> str:
        return f"{_pct(a.get('validation'))} / {_pct(a.get('test'))}"

    text = pair(row.get("agreement", {}))
    if "agreement_as_written" in row:
        text += f" (as written: {pair(row['agreement_as_written'])})"
    return text


def _index(names: tuple[str, ...], name: str) -> int:
    return names.index(name) if name in names else len(names)


def _seconds(value) -> str:
    """Wall seconds; rows from before they were kept (and the file as it is) have none."""
    return "-" if not value else f"{value:.0f}"


def _load(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _plot(plt, blocks):
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.6), squeeze=False)
    for ax, ((key, setting), block) in zip(axes[0], blocks.items()):
        names = [r["method"] for r in block]
        ax.barh(names, [r["result"]["test"] for r in block], color="#4a7ab5")
        ax.axvline(block[0]["float"]["test"], color="k", ls="--", lw=1, label="float")
        ax.set_title(f"{key}, {setting}", fontsize=9)
        ax.set_xlabel("test top-1 %")
        ax.invert_yaxis()
    axes[0][0].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
