"""E7 (the seed's ImageNet experiment): MobileNetV2 from the two deployed .tflite files.

    python benchmarks/experiments/e7_imagenet.py [--files quant ptq] [--settings own w4a8 ...]
        [--methods ...] [--n-repair 1000] [--n-validation 500] [--adaround-iters 1000]
        [--bc-images 64] [--fresh | --redo | --render]

R: `sample1000` (one ImageNet image per class). V and T: drawn disjointly from `nips17` (V
`--n-validation` images, T the rest; seed 0), so no decision sees T and V is held out.
Settings:

- `own`: each file at its own INT8, as deployed. "file" is the file unchanged; "qnnrepair" the
  default repair of the file itself (`qnnrepair repair --quantized FILE.tflite`), written back
  as a .tflite. Their V and T top-1 are LiteRT's (beside the simulation's).
- `w4a8`, `w8a8-pt`, ...: the file's float reference (its dequantized weights, float
  activations) re-quantized by qnnrepair's quantizer (per-channel weights unless `-pt`; first
  and last layer at 8 bits); methods as in the bench (RTN, bias correction, SQuant, AdaRound,
  qnnrepair, AdaRound + qnnrepair), numbers from the simulation.

Each (file, setting, method) runs in a fresh subprocess, so "peak MiB" (its ru_maxrss, data
and models included) is that method's own; a row is saved as soon as its method finishes, and
an interrupted run resumes with the methods not yet in the JSON. CPU seconds include the RTN
quantization a method starts from, and for "+qnnrepair" rows the method below it (as in the
bench), which that subprocess runs again.
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
from pathlib import Path

import torch
from _shared import DEFAULT_SHARED, Clock, header, meta, results, write
from common import git_revision

from qnnrepair.bench.config import BenchConfig
from qnnrepair.bench.methods import get_method
from qnnrepair.evaluation import accuracy
from qnnrepair.formats.deployed import load_deployed, write_deployed
from qnnrepair.formats.runtime import runtime_predictions
from qnnrepair.pipeline import prepare_deployed, run_repair
from qnnrepair.quantization import QuantConfig, quantize
from qnnrepair.repair import preset

NAME = "e7_imagenet"
FILES = {"quant": "mobilenet_v2_1.0_224_quant.tflite",
         "ptq": "tf2_mobilenet_v2_1.0_224_ptq.tflite"}
SETTINGS = ("own", "w4a8", "w8a8-pt")
METHODS = ("file", "qnnrepair", "rtn", "bias_correction", "squant", "adaround",
           "adaround+qnnrepair")  # "file" (the file as it is) only in the setting "own"
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
             adaround_iters=args.adaround_iters, bc_images=args.bc_images)
    if not args.render:
        for key in args.files:
            for setting in args.settings:
                methods = ([m for m in args.methods if m in ("file", "qnnrepair")]
                           if setting == "own" else [m for m in args.methods if m != "file"])
                for method in methods:
                    if rows.has(file=key, setting=setting, method=method):
                        continue
                    print(f"{key} {setting} {method} ...", file=sys.stderr, flush=True)
                    for row in child(args, key, setting, method):
                        rows.add(row, m)
                        print(f"  {row['method']}: test {row['result']['test']:.2f}% "
                              f"({row['cpu_s']:.0f} CPU s, {row['peak_mib']:.0f} MiB)",
                              file=sys.stderr, flush=True)
    render(rows.rows, m, args.name)


def child(args, key: str, setting: str, method: str) -> list[dict]:
    """One method in a fresh process: its own peak memory, nothing cached."""
    argv = [sys.executable, __file__, "--piece", key, setting, "--shared", str(args.shared),
            "--n-repair", str(args.n_repair), "--n-validation", str(args.n_validation),
            "--adaround-iters", str(args.adaround_iters), "--bc-images", str(args.bc_images),
            "--methods", method]
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
    base = {"file": key, "setting": setting, "splits": work.splits.describe(),
            "float": _accuracies(deployed.float_model, work)}
    if setting == "own":
        return [{**base, **row} for row in _own(deployed, work, args.methods)]
    return [{**base, **row} for row in _requantized(work, setting, args)]


def _own(deployed, work, methods) -> list[dict]:
    """The file as deployed ("file"), or repaired ("qnnrepair"); V and T also through LiteRT."""
    if "qnnrepair" not in methods:
        return [_row("file", deployed.model, work, None, Path(deployed.path))]
    with tempfile.TemporaryDirectory() as tmp:
        with Clock() as clock:
            result = run_repair(work, None, preset("default"), quantized=deployed)
        out = Path(tmp) / "repaired.tflite"
        write_deployed(result.repaired, out)
        return [_row("qnnrepair", result.repaired.model, work, clock, out,
                     changed=len(result.repairer.changes_))]


def _requantized(work, setting: str, args) -> list[dict]:
    config = BenchConfig(methods=tuple(m for m in args.methods if "+" not in m),
                         on_top=(), adaround_iters=args.adaround_iters,
                         baseline_params={"bias_correction": {"max_images": args.bc_images}})
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
        row = _row(name, model.model, work, clock, None)
        row["cpu_s"] += extra
        rows.append(row)
        print(f"  {name}: test {row['result']['test']:.2f}%", file=sys.stderr, flush=True)
    return rows


def _row(method: str, model, work, clock, runtime_file: Path | None, **extra) -> dict:
    row = {"method": method, "result": _accuracies(model, work),
           "cpu_s": clock.cpu if clock else 0.0, "wall_s": clock.wall if clock else 0.0,
           "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "revision": git_revision(), "load": os.getloadavg()[0], **extra}
    if runtime_file is not None:
        row["runtime"] = {}
        for split in ("validation", "test"):
            _, got = runtime_predictions(runtime_file, work.images(split))
            row["runtime"][split] = 100.0 * float((got == work.labels(split).numpy()).mean())
    return row


def _accuracies(model, work) -> dict[str, float]:
    return {s: accuracy(model, work.images(s), work.labels(s)) for s in SPLITS}


def render(rows: list[dict], m: dict, name: str) -> None:
    what = ("Top-1 (%) of MobileNetV2 on ImageNet images. R = sample1000 (one image per class), "
            "V and T disjoint halves of nips17 (see the split line per block). `own`: the file's "
            "own INT8, V/T through LiteRT (simulation beside it); other settings: the file's "
            "float reference re-quantized by qnnrepair (simulation). CPU s include the RTN "
            "model a method starts from and, for '+qnnrepair', the method below it; wall s "
            "is the method alone (RTN's: a copy of the model). Peak MiB: the method's process "
            "(data, float evaluation and RTN included; LP worker processes not counted). Rows "
            "without a revision are from before it was kept (session 6, other code).")
    lines = header("E7: MobileNetV2 on ImageNet (the seed's experiment)", m, what)
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["file"], r["setting"]), []).append(r)
    for (key, setting), block in blocks.items():
        f = block[0]["float"]
        lines += [f"## {FILES[key]}, {setting}", "",
                  f"Float reference: V {f['validation']:.2f}, T {f['test']:.2f}. "
                  f"Splits: {block[0]['splits']}", "",
                  "| method | V | T | V LiteRT | T LiteRT | R | CPU s | wall s | peak MiB | "
                  "revision, load |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in block:
            rt = r.get("runtime", {})
            lines.append(
                f"| {r['method']} | {r['result']['validation']:.2f} | "
                f"{r['result']['test']:.2f} | {_pct(rt.get('validation'))} | "
                f"{_pct(rt.get('test'))} | {r['result']['repair']:.2f} | {r['cpu_s']:.0f} | "
                f"{_seconds(r.get('wall_s'))} | {r['peak_mib']:.0f} | "
                f"{r.get('revision', '-')}, {_load(r.get('load'))} |")
        lines.append("")
    write(name, "\n".join(lines) + "\n", lambda plt: _plot(plt, blocks))


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
