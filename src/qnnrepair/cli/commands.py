"""The model commands: demo, quantize, evaluate, localize, repair, export, train."""

from __future__ import annotations

import json
import os
import sys
import time

from qnnrepair.cli.options import (
    image_size,
    quantized_of,
    repair_config,
    sidecar,
    workload_of,
)
from qnnrepair.errors import QnnRepairError
from qnnrepair.fileio import check_output_folder


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
    workload, _ = workload_of(args)
    qmodel = quantized_of(args, workload, None)
    save_quantized(qmodel, args.output)
    val = accuracy(qmodel.model, workload.images("validation"), workload.labels("validation"))
    print(f"wrote {args.output}: {qmodel}, validation accuracy {val:.2f}%")
    return 0


def cmd_evaluate(args) -> int:
    from qnnrepair.data.splits import SPLIT_NAMES
    from qnnrepair.evaluation import accuracy

    workload, quantized = workload_of(args)
    qmodel = quantized_of(args, workload, quantized)
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

    workload, quantized = workload_of(args)
    qmodel = quantized_of(args, workload, quantized)
    config = repair_config(args)
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
    n_images = 100 if args.layer_images is None else args.layer_images
    table = _layer_table(workload, qmodel, localizer, config, n_images, args.progress)
    if table is not None:
        print("\n" + table.to_text())
    if args.output is not None:
        payload = {"metric": metric, "ranking": ranking,
                   "layers": None if table is None else table.to_dict()}
        write_text(args.output, json.dumps(payload, indent=1))
        print(f"wrote {args.output}")
    return 0


def _layer_table(workload, qmodel, localizer, config, n_images: int, show_progress: bool):
    """The per-layer table on `n_images` validation images spread over V (None for 0), with
    the blame shares of the gradient blame (fitted here when the ranking used another)."""
    from qnnrepair.data.splits import spread
    from qnnrepair.localization.layer_costs import layer_costs
    from qnnrepair.repair.engine import fit_localizer

    if n_images <= 0:
        return None
    images, labels = workload.images("validation"), workload.labels("validation")
    chosen = spread(len(images), n_images)
    if localizer is None or config.localization.metric not in ("gradient", "counterfactual"):
        localizer = fit_localizer(qmodel, workload.images("repair"), workload.labels("repair"),
                                  config.replace(metric="gradient"))
    return layer_costs(qmodel, images[chosen], labels[chosen], localizer.scores_,
                       show_progress=show_progress)


def cmd_repair(args) -> int:
    from qnnrepair.fileio import write_text
    from qnnrepair.formats.deployed import is_deployed, output_format_matches, write_deployed
    from qnnrepair.pipeline import run_repair
    from qnnrepair.quantization import save_quantized

    if args.output is None:
        raise QnnRepairError("--output is required: the repaired model file to write")
    check_output_folder(args.output)
    if args.report_html is not None:
        check_output_folder(args.report_html)
    deployed = is_deployed(args.quantized)
    if deployed:
        output_format_matches(args.quantized, args.output)
    workload, quantized = workload_of(args)
    qmodel = quantized_of(args, workload, quantized)
    config = repair_config(args)
    result = run_repair(workload, None, config, quantized=qmodel, show_progress=args.progress)
    if args.layer_images:
        table = _layer_table(workload, result.quantized, result.repairer.localizer_, config,
                             args.layer_images, args.progress)
        result.report.layer_costs = table.to_dict()
    text = result.report.to_text()
    page = None
    if args.report_html is not None:
        from qnnrepair.html_report import render_html

        page = render_html(result.report)  # before any file is written
    if deployed:
        changed = write_deployed(result.repaired, args.output)
        text += f"\n\n{args.output.name}: {len(changed)} weight/bias tensors changed"
        text += "\n" + _runtime_lines(args.output, args.quantized, result, workload)
    else:
        save_quantized(result.repaired, args.output)
    write_text(sidecar(args.output, ".report.json"), result.report.to_json())
    write_text(sidecar(args.output, ".summary.txt"), text + "\n")
    if page is not None:
        write_text(args.report_html, page)
    print(text)
    print(f"\nwrote {args.output}, {sidecar(args.output, '.report.json').name}, "
          f"{sidecar(args.output, '.summary.txt').name}"
          + (f", {args.report_html}" if page is not None else ""))
    return 0


def _runtime_lines(repaired_path, original_path, result, workload) -> str:
    """The test split through the file's own runtime, before and after the repair; a note
    instead when the runtime is not installed (the repair itself does not need it)."""
    from qnnrepair.formats.runtime import check_runtime, simulated_predictions

    images, labels = workload.images("test"), workload.labels("test")
    try:
        simulated = simulated_predictions(result.quantized.model, images)
        before = check_runtime(original_path, result.quantized.model, images, labels,
                               simulated=simulated)
        unchanged = not result.repairer.changes_  # the same simulation: not run again
        after = check_runtime(repaired_path, result.repaired.model, images, labels,
                              simulated=simulated if unchanged else None)
    except QnnRepairError as err:
        return f"not checked in the runtime: {err}"
    return f"test, input file:    {before}\ntest, repaired file: {after}"


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
    workload, _ = workload_of(args)
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
    from qnnrepair.data import load_dataset
    from qnnrepair.training import TrainConfig, log_path, save_trained, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, device=args.device)
    size = image_size(args)
    data = [load_dataset(path, split, size) if size else path
            for path, split in ((args.train, "train"), (args.test, "test"))]
    result = train(args.model, *data, config, num_classes=args.num_classes,
                   show_progress=args.progress)
    save_trained(result, args.out)
    print(f"{args.model}: {config.epochs} epochs on {result.n_train} images, final test "
          f"accuracy {result.test_accuracy:.2f}% ({result.n_test} images), total time "
          f"{result.wall_s:.1f}s")
    print(f"wrote {args.out}, {log_path(args.out).name}")
    return 0


