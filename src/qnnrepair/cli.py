"""The `qnnrepair` command. The only module that prints or configures logging.

Every failure caused by input is one line on stderr and exit code 2; Ctrl-C is exit 130. Output
files are written whole (temporary file, then rename) or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import check_output_folder

logger = logging.getLogger("qnnrepair")


# ---------------------------------------------------------------- shared options

def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="zoo name (resnet20, resnet32, conv3, ...), your own "
                   "package.module:factory (importable here or from the working folder) or "
                   "path/to/file.py:factory; factory() returns the nn.Module. Importing your "
                   "module runs its code. Formats: docs/DATA.md")
    _add_norm(g)
    g.add_argument("--weights", type=Path, help="float checkpoint (state dict) for --model")
    g.add_argument("--quantized", type=Path,
                   help="a quantized model file from `qnnrepair quantize` (instead of quantizing)")
    g.add_argument("--data", type=Path, help="training-split data: R and V are drawn from it "
                   "(.npz, idx folder, CIFAR batches folder, image folder or a folder with "
                   "labels.csv; docs/DATA.md)")
    g.add_argument("--test-data", type=Path, help="held-out data: validation and test are "
                   "drawn from it, disjointly (default: the rest of --data)")
    g.add_argument("--validation-data", type=Path, help="validation data of its own (default: "
                   "drawn from --test-data, else from --data with a warning)")
    g.add_argument("--n-repair", type=int, default=1000, help="repair-set size (default 1000)")
    g.add_argument("--n-validation", type=int, default=1000,
                   help="validation-set size (default 1000)")
    g.add_argument("--n-test", type=int, default=None, help="test-set size (default: all)")
    g.add_argument("--num-classes", type=int, default=10)
    g.add_argument("--seed", type=int, default=0, help="seed of splits, sampling and ties")


def _add_norm(g) -> None:
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="input mean per channel (e.g. 0.485 0.456 0.406) of a module:factory "
                   "model, after scaling pixels to [0, 1], as it was trained (default 0)")
    g.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="input std per channel (e.g. 0.229 0.224 0.225) of a module:factory "
                   "model (default 1); zoo models use their own")


def _norm_note(spec: str, args) -> None:
    """Say so when a user's model gets plain [0, 1] input: it may have been trained otherwise.
    On stdout, with the results it qualifies: stderr holds only errors and warnings."""
    if ":" in spec and args.mean is None and args.std is None:
        print(f"note: {spec} gets pixels scaled to [0, 1], not normalized; if it was trained "
              "on normalized input, pass --mean R G B --std R G B")


def _add_quant(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--setting", default="w4a8", help="weight/activation bits, e.g. w8a8, w4a4")
    g.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    from qnnrepair.quantization.config import ACT_CALIBRATIONS, WEIGHT_CLIPPINGS

    g.add_argument("--weight-clipping", default="maxabs", choices=WEIGHT_CLIPPINGS)
    g.add_argument("--act-calibration", default="minmax", choices=ACT_CALIBRATIONS)
    g.add_argument("--percentile", type=float, default=99.99)
    g.add_argument("--first-last-bits", default="8",
                   help="bits of the first and last layer, or 'none' (default 8)")
    g.add_argument("--override", action="append", default=[], metavar="LAYER=wXaY",
                   help="per-layer bits by module name, e.g. layer3.2.conv2=w8a8 (repeatable)")


def _add_repair(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repair")
    g.add_argument("--preset", default="default", help="default or paper")
    g.add_argument("--metric", help="how neurons are blamed: gradient (first-order output "
                   "blame), counterfactual (exact, slow), or an SBFL metric (ochiai, tarantula, "
                   "dstar, ...)")
    g.add_argument("--state-rule", help="neuron-state rule (relative_error, activation_flip, ...)")
    from qnnrepair.outcomes import ORACLES
    from qnnrepair.repair.config import LAYER_CHOICES

    g.add_argument("--oracle", choices=ORACLES)
    g.add_argument("--layers", choices=LAYER_CHOICES)
    g.add_argument("--max-neurons", type=int)
    g.add_argument("--time-budget", type=float, help="seconds for the LP loop")
    g.add_argument("--milp", action="store_true", help="integer LPs with a time limit")
    g.add_argument("--workers", type=int, help="processes solving LPs (default 2)")
    from qnnrepair.repair.lp import BACKENDS

    g.add_argument("--backend", choices=tuple(BACKENDS),
                   help="where LPs are solved: local processes (default) or a Ray cluster")
    g.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster to solve LPs on (implies --backend ray; default: "
                        "RAY_ADDRESS, else a local Ray of --workers CPUs)")


def _quant_config(args):
    from qnnrepair.quantization import QuantConfig

    first_last = None if str(args.first_last_bits).lower() == "none" else _int(
        args.first_last_bits, "--first-last-bits")
    config = QuantConfig.from_setting(args.setting, per_channel=not args.per_tensor,
                                      weight_clipping=args.weight_clipping,
                                      act_calibration=args.act_calibration,
                                      percentile=args.percentile, first_last_bits=first_last)
    overrides = {}
    for item in args.override:
        name, _, setting = item.partition("=")
        bits = QuantConfig.from_setting(setting)
        overrides[name] = (bits.weight_bits, bits.act_bits)
    return config.with_overrides(overrides) if overrides else config


def _repair_config(args):
    from qnnrepair.repair import preset

    names = {"metric": "metric", "state_rule": "state_rule", "oracle": "oracle",
             "layers": "layers", "max_neurons": "max_neurons", "time_budget": "time_budget_s",
             "workers": "n_workers", "backend": "backend"}
    overrides = {field: getattr(args, arg) for arg, field in names.items()
                 if getattr(args, arg) is not None}
    if args.ray_address is not None:
        if overrides.setdefault("backend", "ray") != "ray":
            raise QnnRepairError(f"--ray-address needs --backend ray, not {args.backend}")
        os.environ["RAY_ADDRESS"] = args.ray_address  # read by the ray backend (and by Ray)
    if args.milp:
        overrides["integer"] = True
    overrides["seed"] = args.seed
    return preset(args.preset, **overrides)


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise QnnRepairError(f"{flag} must be an integer or 'none', got {text!r}") from None


def _workload(args):
    """(workload, quantized model or None) from --model/--weights or --quantized, and --data."""
    from qnnrepair.pipeline import prepare
    from qnnrepair.quantization import load_quantized

    if args.data is None:
        raise QnnRepairError("--data is required: give the data set R and V are drawn from")
    quantized = None
    if args.quantized is not None:
        # --model may say where a user's factory is when the file was made in another folder
        quantized = load_quantized(args.quantized, model_spec=args.model)
        spec, model = quantized.model_spec, quantized.float_model
    elif args.model is None:
        raise QnnRepairError("--model is required (or --quantized FILE)")
    else:
        spec, model = args.model, None
    workload = prepare(spec, args.weights, args.data, args.test_data, n_repair=args.n_repair,
                       n_validation=args.n_validation, n_test=args.n_test, seed=args.seed,
                       num_classes=args.num_classes, model=model,
                       validation_data=args.validation_data, mean=args.mean, std=args.std)
    _norm_note(spec, args)
    return workload, quantized


def _quantized(args, workload, quantized):
    from qnnrepair.quantization import quantize

    if quantized is not None:
        return quantized
    return quantize(workload.model, _quant_config(args), workload.images("repair"),
                    model_spec=workload.model_spec, seed=args.seed, show_progress=args.progress)


def _sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.stem + suffix)


# ---------------------------------------------------------------- commands

def cmd_demo(args) -> int:
    from qnnrepair.pipeline import demo_workload, run_repair
    from qnnrepair.quantization import QuantConfig
    from qnnrepair.repair import preset

    start = time.perf_counter()
    print("qnnrepair demo: CIFAR-10 ResNet-20 (embedded), quantized to "
          f"{args.setting.upper()} (first and last layer at 8 bits), repaired with the "
          "default preset\n", file=sys.stderr)
    workload = demo_workload(seed=args.seed)
    result = run_repair(workload, QuantConfig.from_setting(args.setting),
                        preset("default", seed=args.seed), show_progress=args.progress)
    print(result.report.to_text())
    print(f"\ntotal time {time.perf_counter() - start:.1f}s")
    return 0


def cmd_quantize(args) -> int:
    from qnnrepair.evaluation import accuracy
    from qnnrepair.quantization import save_quantized

    if args.output is None:
        raise QnnRepairError("--output is required: the quantized model file to write")
    workload, _ = _workload(args)
    qmodel = _quantized(args, workload, None)
    save_quantized(qmodel, args.output)
    val = accuracy(qmodel.model, workload.images("validation"), workload.labels("validation"))
    print(f"wrote {args.output}: {qmodel}, validation accuracy {val:.2f}%")
    return 0


def cmd_evaluate(args) -> int:
    from qnnrepair.data.splits import SPLIT_NAMES
    from qnnrepair.evaluation import accuracy

    workload, quantized = _workload(args)
    qmodel = _quantized(args, workload, quantized)
    print(f"{workload.model_spec} {qmodel.config.setting}")
    for split in SPLIT_NAMES:
        images, labels = workload.images(split), workload.labels(split)
        f = accuracy(qmodel.float_model, images, labels, show_progress=args.progress)
        q = accuracy(qmodel.model, images, labels, show_progress=args.progress)
        print(f"  {split:<10} ({len(labels):>5} images)  float {f:6.2f}%  quantized {q:6.2f}%")
    return 0


def cmd_localize(args) -> int:
    from qnnrepair.fileio import write_text
    from qnnrepair.repair.engine import fit_localizer

    workload, quantized = _workload(args)
    qmodel = _quantized(args, workload, quantized)
    config = _repair_config(args)
    metric = config.localization.metric
    localizer = fit_localizer(qmodel, workload.images("repair"), workload.labels("repair"),
                              config, show_progress=args.progress)
    spectrum = getattr(localizer, "spectrum_", None)  # SBFL metrics only
    if spectrum is not None:
        print(f"{spectrum.n_failed} failing, {spectrum.n_passed} passing, "
              f"{spectrum.n_skipped} skipped repair inputs; metric {metric}")
    else:
        print(f"{len(workload.labels('repair'))} repair inputs; metric {metric}")
    ranking = [{"neuron": str(n), "layer": n.layer, "index": n.index,
                "score": float(localizer.scores_[n.layer][n.index])}
               for n in localizer.ranking_]
    for row in ranking[:args.top]:
        print(f"  {row['neuron']:<24} {row['score']:.4f}")
    if args.output is not None:
        write_text(args.output, json.dumps({"metric": metric, "ranking": ranking},
                                           indent=1))
        print(f"wrote {args.output}")
    return 0


def cmd_repair(args) -> int:
    from qnnrepair.fileio import write_text
    from qnnrepair.pipeline import run_repair
    from qnnrepair.quantization import save_quantized

    if args.output is None:
        raise QnnRepairError("--output is required: the repaired model file to write")
    check_output_folder(args.output)
    if args.report_html is not None:
        check_output_folder(args.report_html)
    workload, quantized = _workload(args)
    qmodel = _quantized(args, workload, quantized)
    result = run_repair(workload, None, _repair_config(args), quantized=qmodel,
                        show_progress=args.progress)
    text = result.report.to_text()
    page = None
    if args.report_html is not None:
        from qnnrepair.html_report import render_html

        page = render_html(result.report)  # before any file is written
    save_quantized(result.repaired, args.output)
    write_text(_sidecar(args.output, ".report.json"), result.report.to_json())
    write_text(_sidecar(args.output, ".summary.txt"), text + "\n")
    if page is not None:
        write_text(args.report_html, page)
    print(text)
    print(f"\nwrote {args.output}, {_sidecar(args.output, '.report.json').name}, "
          f"{_sidecar(args.output, '.summary.txt').name}"
          + (f", {args.report_html}" if page is not None else ""))
    return 0


def cmd_export(args) -> int:
    from qnnrepair.export import check_onnx, export_onnx
    from qnnrepair.quantization import load_quantized

    if args.quantized is None or args.output is None:
        raise QnnRepairError("--quantized FILE and --output FILE.onnx are required")
    qmodel = load_quantized(args.quantized)
    if args.data is None:
        import torch

        from qnnrepair.models import model_info

        shape = model_info(qmodel.model_spec).input_shape if ":" not in qmodel.model_spec \
            else None
        if shape is None:
            raise QnnRepairError("--data is required to export a user model (for its input shape)")
        export_onnx(qmodel, args.output, torch.zeros(1, *shape))
        print(f"wrote {args.output} (not checked: give --data to compare with ONNX Runtime)")
        return 0
    workload, _ = _workload(args)
    export_onnx(qmodel, args.output, workload.images("test")[:1])
    check = check_onnx(args.output, qmodel, workload.images("test"), workload.labels("test"))
    print(f"wrote {args.output}; ONNX Runtime vs simulation on {check['n_images']} test images: "
          f"{100 * check['agreement']:.2f}% same predictions, accuracy "
          f"{check['onnx_accuracy']:.2f}% vs {check['sim_accuracy']:.2f}%")
    return 0


def cmd_train(args) -> int:
    if args.model is None or args.train is None or args.test is None or args.out is None:
        raise QnnRepairError("train needs --model NAME, --train DATA, --test DATA and --out FILE")
    check_output_folder(args.out)
    if args.device.startswith("cuda"):  # before torch starts CUDA: cuBLAS reads it then
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from qnnrepair.training import TrainConfig, log_path, save_trained, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, device=args.device)
    result = train(args.model, args.train, args.test, config, num_classes=args.num_classes,
                   show_progress=args.progress)
    save_trained(result, args.out)
    print(f"{args.model}: {config.epochs} epochs on {result.n_train} images, final test "
          f"accuracy {result.test_accuracy:.2f}% ({result.n_test} images), total time "
          f"{result.wall_s:.1f}s")
    print(f"wrote {args.out}, {log_path(args.out).name}")
    return 0


def cmd_bench(args) -> int:
    from dataclasses import replace
    from functools import partial

    from qnnrepair.bench import BenchConfig, BenchRecord, run_bench
    from qnnrepair.pipeline import prepare
    from qnnrepair.report import machine

    check_output_folder(args.output / "x")
    if args.merge:
        if args.checkpoint or args.data or args.test_data or args.settings or args.quick:
            raise QnnRepairError("--merge only joins finished runs; leave out --checkpoint, "
                                 "--data, --test-data, --settings and --quick")
        record = BenchRecord.merged(args.merge, args.output / args.name)
        record.write()
        print(f"wrote {args.output / args.name}.md, .json, .png: {len(record.rows)} rows from "
              f"{len(args.merge)} runs")
        return 0
    if not args.checkpoint or args.data is None or args.test_data is None:
        raise QnnRepairError("bench needs --checkpoint MODEL=FILE (repeatable), --data and "
                             "--test-data; see qnnrepair bench --help")
    models = [_name_and_path(item) for item in args.checkpoint]
    settings = tuple(args.settings or (("w4a4",) if args.quick else
                                       ("w8a8", "w4a8", "w3a8", "w4a4")))
    config = BenchConfig(adaround_iters=200 if args.quick else 1000, seed=args.seed)
    if args.quick:  # repairs are the slow rows (minutes each); one combination shows the idea
        config = replace(config, methods=tuple(m for m in config.methods if m != "paper"),
                         on_top=("adaround",))
    n_test = args.n_test or (2000 if args.quick else None)
    key = {"config": config.to_dict(), "seed": args.seed, "sizes": {
        "repair": args.n_repair, "validation": args.n_validation, "test": n_test or "all"}}
    record = BenchRecord(args.output / args.name, key, fresh=args.fresh)
    piece = {"command": shlex.join(["qnnrepair", *args.argv]), "machine": machine(),
             "wall_s": 0.0, "done": []}
    workloads = [(model, partial(prepare, model, weights, args.data, args.test_data,
                                 n_repair=args.n_repair, n_validation=args.n_validation,
                                 n_test=n_test, seed=args.seed, mean=args.mean, std=args.std))
                 for model, weights in models]
    for model, _ in models:
        _norm_note(model, args)
    for model, setting, rows in run_bench(record, workloads, settings, config, piece,
                                          show_progress=args.progress):
        print(f"{model} {setting}: " + ", ".join(
            f"{r['method']} {r['result']['test']:.2f}" for r in rows), flush=True)
    if not piece["done"]:
        print(f"nothing to run: {args.output / args.name}.json has every model and setting "
              "asked for (--fresh runs them again)")
        return 0
    print(f"wrote {args.output / args.name}.md, .json, .png; this run {piece['wall_s']:.0f}s, "
          f"all runs {record.meta()['wall_s']:.0f}s")
    return 0


def _name_and_path(item: str) -> tuple[str, Path]:
    # Paths may hold '=' too: split where the right side is an existing file, else at the first.
    cuts = [i for i, ch in enumerate(item) if ch == "="]
    cut = next((i for i in cuts if Path(item[i + 1:]).is_file()), cuts[0] if cuts else -1)
    name, sep, path = item[:cut], item[cut:cut + 1], item[cut + 1:]
    if not sep or not name or not path:
        raise QnnRepairError(f"--checkpoint takes MODEL=FILE, e.g. resnet20=ckpt.th or "
                             f"nets.py:make_net=weights.pt; got {item!r}")
    return name, Path(path)


# ---------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qnnrepair", description=(
        "Repair quantized neural networks: spectrum-based fault localization + linear "
        "programming on integer weights, guarded by validation."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="repair the embedded ResNet-20 on embedded CIFAR-10 images")
    p.add_argument("--setting", default="w3a8", help="quantization setting (default w3a8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("quantize", help="quantize a float model and write the quantized file")
    _add_data(p)
    _add_quant(p)
    p.add_argument("--output", type=Path, help="quantized model file to write")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="float and quantized accuracy on every split")
    _add_data(p)
    _add_quant(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("localize", help="rank neurons by suspiciousness")
    _add_data(p)
    _add_quant(p)
    _add_repair(p)
    p.add_argument("--top", type=int, default=20, help="how many neurons to print")
    p.add_argument("--output", type=Path, help="write the full ranking as JSON")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("repair", help="repair a quantized model; writes model, report, summary")
    _add_data(p)
    _add_quant(p)
    _add_repair(p)
    p.add_argument("--output", type=Path, help="repaired model file to write (.qnn)")
    p.add_argument("--report-html", type=Path, metavar="PATH",
                   help="also write the report as one self-contained HTML page (plots, tables)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("bench", help="every method side by side on the same data; writes a "
                       "Markdown table, JSON and a PNG plot")
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=FILE",
                   help="model spec (zoo name, package.module:factory or path/file.py:factory; "
                   "importing it runs its code) and its float checkpoint (repeatable)")
    _add_norm(p)
    p.add_argument("--data", type=Path, help="training-split data (R and V)")
    p.add_argument("--test-data", type=Path, help="test data")
    p.add_argument("--settings", nargs="+", help="default: w8a8 w4a8 w3a8 w4a4")
    p.add_argument("--n-repair", type=int, default=1000)
    p.add_argument("--n-validation", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="W4A4 only, 2,000 test images, AdaRound 200 iterations, no paper preset, "
                   "qnnrepair on top of AdaRound only")
    p.add_argument("--output", type=Path, default=Path("benchmarks/results"),
                   help="folder for the results (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file stem (default bench)")
    p.add_argument("--fresh", action="store_true",
                   help="start again; by default a run skips the (model, setting) pieces "
                   "already in <name>.json, so a long matrix can be split into invocations")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="write one table from runs split into files (e.g. one model per "
                   "process, each with its own --name); runs nothing")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train a zoo model from scratch (SGD, one-cycle, crop + "
                       "flip); writes its state dict and a per-epoch log")
    p.add_argument("--model", help="zoo name (conv3, conv5, vgg, resnet20, mobilenetv2, ...)")
    p.add_argument("--train", "--data", dest="train", type=Path, help="training data")
    p.add_argument("--test", "--test-data", dest="test", type=Path,
                   help="test data, scored after every epoch")
    p.add_argument("--out", "--output", dest="out", type=Path,
                   help="weights file to write (state dict); the log goes beside it as "
                   "NAME.log.jsonl")
    p.add_argument("--epochs", type=int, default=30, help="default 30 (small models on a CPU)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="peak one-cycle learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0,
                   help="weights, shuffling and augmentation: same seed, same device, same weights")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N; CUDA runs with deterministic algorithms "
                   "and CUBLAS_WORKSPACE_CONFIG=:4096:8")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a quantized model as ONNX QDQ; check it in ONNX "
                       "Runtime on the test split when --data is given")
    _add_data(p)
    p.add_argument("--output", type=Path, help="ONNX file to write")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded by bench beside its results
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QnnRepairError as err:
        print(f"qnnrepair: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qnnrepair: interrupted; no output file was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
