"""E6 (open question 1): how repair time and peak memory scale with depth and architecture.

    python benchmarks/experiments/e6_scaling.py [--models ...] [--sizes 100 1000]
        [--n-test N] [--fresh | --render]

One default repair (`preset("default")`) per model and repair-set size, each in a fresh
subprocess so that its peak memory is that run's alone: the larger of ru_maxrss of the process
(RUSAGE_SELF) and of its largest finished LP worker (RUSAGE_CHILDREN), in MiB. That is the
biggest single process, not the sum over processes (forked workers share the parent's pages).
Each model is quantized at its setting in _shared.SETTINGS, calibrated on R.

Conv3, Conv5, VGG, MobileNetV2 (models/), ResNet-20/32 (shared/models) use trained CIFAR-10
weights. ResNet-44/56 have none: they are built with random weights (seeded), their BatchNorm
statistics re-estimated on R (without that, eval-mode ResNet-56 sends every image to one
class), and R and V relabelled with the float model's predictions, so the repair has as much to
do as on a trained model (float accuracy 100 %, never reached, so the loop runs its whole
schedule). Those rows are for timing only: no accuracy is claimed for them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _shared import (
    DEFAULT_SHARED,
    OUT,
    SETTINGS,
    Clock,
    header,
    meta,
    quantized,
    results,
    workload,
    write,
)

from qnnrepair.evaluation import accuracy, predict
from qnnrepair.models import load_model
from qnnrepair.pipeline import prepare
from qnnrepair.repair import Repairer, preset

NAME = "e6_scaling"
MODELS = ("conv3", "conv5", "vgg", "mobilenetv2", "resnet20", "resnet32", "resnet44", "resnet56")
RANDOM = ("resnet44", "resnet56")  # no trained weights: timing only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000],
                        help="repair-set sizes")
    parser.add_argument("--n-validation", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=None, help="first N test images (all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=NAME, help="results file stem")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier rows")
    parser.add_argument("--render", action="store_true", help="only rewrite md/png from JSON")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "N_REPAIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child: one repair, its row as JSON on the last line of stdout
        return print(json.dumps(one(args.one[0], int(args.one[1]), args)))
    if args.render:
        saved = json.loads((OUT / f"{args.name}.json").read_text())
        return render(args.name, saved["rows"], saved["meta"])
    m = meta(n_validation=args.n_validation, n_test=args.n_test, seed=args.seed,
             repair=preset("default").to_dict())
    rows = results(args.name, args.fresh)
    for model in args.models:
        for size in args.sizes:
            if rows.has(model=model, n_repair=size):
                continue
            rows.add(child(model, size, args), m)
            r = rows.rows[-1]
            print(f"{model} R={size}: {r['params']:,} params, wall {r['wall_s']:.0f} s, CPU "
                  f"{r['cpu_s']:.0f} s, peak {r['peak_mib']:.0f} MiB", flush=True)
    render(args.name, rows.rows, m)


def child(model: str, size: int, args) -> dict:
    """Run `one` in a fresh interpreter and return its row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model, str(size),
           "--shared", str(args.shared), "--n-validation", str(args.n_validation),
           "--seed", str(args.seed)]
    if args.n_test is not None:
        cmd += ["--n-test", str(args.n_test)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} R={size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one(model: str, n_repair: int, args) -> dict:
    """Quantize, then one timed default repair; the row of the results."""
    torch.set_num_threads(2)
    random = model in RANDOM
    work = random_workload(model, n_repair, args) if random else \
        workload(model, args.shared, n_repair, args.n_validation, args.seed, args.n_test)
    qmodel = quantized(work, model, work.images("repair"))
    peak_before = peak_mib()
    with Clock() as clock:
        repairer = Repairer(preset("default", seed=args.seed)).fit(
            qmodel, work.images("repair"), work.labels("repair"), work.images("validation"),
            work.labels("validation"))
    peak = peak_mib()
    test = (None, None) if random else \
        tuple(accuracy(q.model, work.images("test"), work.labels("test"))
              for q in (qmodel, repairer.repaired_))
    return {"model": model, "n_repair": n_repair, "weights": "random" if random else "trained",
            "setting": SETTINGS[model],
            "params": sum(p.numel() for p in work.model.parameters()),
            "layers": len(qmodel.layers),
            "neurons": sum(qmodel.layer(n).out_features for n in qmodel.layers),
            "ranked_neurons": len(repairer.localizer_.ranking_),
            "localize_s": repairer.timings_["localize"],
            "loop_s": repairer.timings_["repair_loop"], "wall_s": clock.wall,
            "cpu_s": clock.cpu, "lps": sum(s.n_lps for s in repairer.steps_),
            "neurons_changed": len(repairer.changes_), "peak_mib": peak,
            "peak_before_repair_mib": peak_before, "n_test": len(work.labels("test")),
            "test_float": None if random else accuracy(work.model, work.images("test"),
                                                       work.labels("test")),
            "test_quantized": test[0], "test_repaired": test[1]}


def random_workload(model: str, n_repair: int, args):
    """A seeded random-weight model whose BatchNorm statistics come from R, with every split
    relabelled by its own float predictions (see the module docstring)."""
    torch.manual_seed(args.seed)
    data = args.shared / "data" / "cifar10"
    work = prepare(model, None, data / "train30k.npz", data / "test.npz", n_repair=n_repair,
                   n_validation=args.n_validation, n_test=args.n_test, seed=args.seed,
                   model=load_model(model, None))
    for module in work.model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches
    with torch.no_grad():
        work.model.train()
        for i in range(0, n_repair, 250):
            work.model(work.images("repair")[i:i + 250])
    work.model.eval()
    for split in ("repair", "validation"):
        images = work.images(split)
        work.tensors[split] = (images, predict(work.model, images))
    return work


def peak_mib() -> float:
    """Peak resident memory so far of this process or its largest finished child (Linux: KiB)."""
    return max(resource.getrusage(who).ru_maxrss
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


def render(name: str, rows: list[dict], m: dict) -> None:
    out = header(
        "E6: repair time and peak memory against model size and repair-set size", m,
        "One default repair per row, each in a fresh process. Quantization per model as in "
        "the setting column (per-channel weights, first and last layer at 8 bits, activations "
        f"min-max calibrated on R). V = {m['n_validation']} images drawn from the test file, "
        f"T = {m['n_test'] or 'the other'} test images (accuracies in %). Peak: the larger "
        "of ru_maxrss of the process and of its largest finished LP worker, in MiB (the "
        "biggest single process, including the loaded data set and the models); 'before' is "
        "that peak just before the repair started. Times in seconds: localize, acceptance "
        "loop, total wall and CPU (all threads and LP workers). Neurons: of all quantized "
        "layers; ranked: those the default repair localizes (all but the output layer). "
        "Rows with random weights (ResNet-44/56) are for timing only; they have no accuracy.")
    out += ["| model | weights | setting | params | layers | neurons | ranked | R | localize s | "
            "loop s | wall s | CPU s | LPs | changed | peak MiB | before | test F | test Q | "
            "test repaired |", "|" + "---|" * 19]
    for r in sorted(rows, key=lambda r: (r["params"], r["n_repair"])):
        tf, tq, tr = (f"{r[k]:.2f}" if r[k] is not None else "-"
                      for k in ("test_float", "test_quantized", "test_repaired"))
        out.append(f"| {r['model']} | {r['weights']} | {r['setting'].upper()} | "
                   f"{r['params']:,} | {r['layers']} | {r['neurons']:,} | "
                   f"{r['ranked_neurons']:,} | {r['n_repair']} | {r['localize_s']:.1f} | "
                   f"{r['loop_s']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['lps']} | "
                   f"{r['neurons_changed']} | {r['peak_mib']:.0f} | "
                   f"{r['peak_before_repair_mib']:.0f} | {tf} | {tq} | {tr} |")
    write(name, "\n".join(out) + "\n", (lambda plt: plot(plt, rows)) if rows else None)


def plot(plt, rows: list[dict]):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = dict(zip(sorted({r["n_repair"] for r in rows}), "osD^v"))
    for size, marker in markers.items():
        sub = sorted((r for r in rows if r["n_repair"] == size), key=lambda r: r["params"])
        x = np.array([r["params"] for r in sub])
        left.plot(x, [r["wall_s"] for r in sub], marker=marker, ls=":", label=f"R = {size}")
        right.plot(x, [r["peak_mib"] for r in sub], marker=marker, ls=":", label=f"R = {size}")
        for r in sub:
            tag = r["model"] + ("*" if r["weights"] == "random" else "")
            left.annotate(tag, (r["params"], r["wall_s"]), fontsize=7)
            right.annotate(tag, (r["params"], r["peak_mib"]), fontsize=7)
    left.set(xscale="log", yscale="log", xlabel="parameters", ylabel="repair wall seconds",
             title="E6: repair time (* random weights)")
    right.set(xscale="log", ylim=(0, None), xlabel="parameters", ylabel="peak memory MiB",
              title="E6: peak memory (largest process)")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
