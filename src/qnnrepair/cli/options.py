"""The options several commands share, and the configs and workloads built from them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qnnrepair.errors import QnnRepairError


def add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="zoo name (resnet20, resnet32, conv3, ...), your own "
                   "package.module:factory (importable here or from the working folder) or "
                   "path/to/file.py:factory; factory() returns the nn.Module. Importing your "
                   "module runs its code. Formats: docs/DATA.md")
    add_norm(g)
    g.add_argument("--weights", type=Path, help="float checkpoint (state dict) for --model")
    g.add_argument("--quantized", type=Path,
                   help="the quantized model: a deployed .tflite file, an ONNX QDQ file "
                   "(with --float-model), or a .qnn file from `qnnrepair quantize`")
    g.add_argument("--float-model", type=Path, metavar="FILE.onnx",
                   help="the float ONNX model an ONNX QDQ --quantized file was quantized from")
    g.add_argument("--label-offset", type=int, default=None,
                   help="added to every label of a deployed file's data (default: 1 for a "
                   "model with 1001 outputs, whose output 0 is 'background', else 0)")
    g.add_argument("--data", type=Path, help="training-split data: R is drawn from it (V only "
                   "without --test-data and --validation-data) (.npz, idx folder, CIFAR "
                   "batches folder, image folder or a folder with labels.csv; docs/DATA.md)")
    g.add_argument("--test-data", type=Path, help="held-out data: validation and test are "
                   "drawn from it, disjointly (default: the rest of --data)")
    g.add_argument("--validation-data", type=Path, help="validation data of its own (default: "
                   "drawn from --test-data, else from --data with a warning)")
    add_size(g)
    g.add_argument("--n-repair", type=int, default=1000, help="repair-set size (default 1000)")
    g.add_argument("--n-validation", type=int, default=None,
                   help="validation-set size (default 1000, or half the held-out data when "
                   "--test-data has fewer than 2,000 images; test is the rest)")
    g.add_argument("--n-test", type=int, default=None, help="test-set size (default: all)")
    g.add_argument("--num-classes", type=int, default=10)
    g.add_argument("--seed", type=int, default=0, help="seed of splits, sampling and ties")


def add_size(g) -> None:
    g.add_argument("--resize", type=int, metavar="N", help="resize every image so that its "
                   "shorter side is N pixels (bilinear), as it is loaded (default: as stored)")
    g.add_argument("--crop", type=int, metavar="M", help="then keep the centre M x M square "
                   "(with --resize 256 --crop 224: the ImageNet evaluation convention)")


def add_norm(g) -> None:
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="input mean per channel (e.g. 0.485 0.456 0.406) of a module:factory "
                   "model, after scaling pixels to [0, 1], as it was trained (default 0)")
    g.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="input std per channel (e.g. 0.229 0.224 0.225) of a module:factory "
                   "model (default 1); zoo models use their own")


def norm_note(spec: str, args) -> None:
    """Say so when a user's model gets plain [0, 1] input: it may have been trained otherwise.
    On stdout, with the results it qualifies: stderr holds only errors and warnings."""
    if ":" in spec and args.mean is None and args.std is None:
        print(f"note: {spec} gets pixels scaled to [0, 1], not normalized; if it was trained "
              "on normalized input, pass --mean R G B --std R G B")


def add_quant(p: argparse.ArgumentParser) -> None:
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


def add_repair(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repair")
    g.add_argument("--preset", default="default", help="default or paper")
    g.add_argument("--metric", help="how neurons are blamed: gradient (first-order output "
                   "blame), counterfactual (exact, slow), or an SBFL metric (ochiai, tarantula, "
                   "dstar, ...)")
    g.add_argument("--state-rule", help="neuron-state rule (relative_error, activation_flip, ...)")
    from qnnrepair.outcomes import ORACLES
    from qnnrepair.repair.config import LAYER_CHOICES

    g.add_argument("--layer-images", type=int, metavar="N", default=None,
                   help="per-layer table (each layer alone in float, alone quantized) on N "
                   "validation images: localize's default 100, 0 for none; repair adds it "
                   "to its report when given")
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


def quant_config(args):
    from qnnrepair.quantization import QuantConfig

    first_last = None if str(args.first_last_bits).lower() == "none" else int_or_none(
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


def repair_config(args):
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


def int_or_none(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise QnnRepairError(f"{flag} must be an integer or 'none', got {text!r}") from None


def workload_of(args):
    """(workload, quantized model or None) from --model/--weights or --quantized, and --data."""
    from qnnrepair.formats.deployed import is_deployed
    from qnnrepair.pipeline import prepare
    from qnnrepair.quantization import load_quantized

    if args.data is None:
        raise QnnRepairError("--data is required: give the data set R is drawn from")
    if is_deployed(args.quantized):
        return _deployed_workload(args)
    if args.float_model is not None or args.label_offset is not None:
        raise QnnRepairError("--float-model and --label-offset are for deployed files: give "
                             "--quantized FILE.tflite or FILE.onnx")
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
                       validation_data=args.validation_data, mean=args.mean, std=args.std,
                       size=image_size(args))
    norm_note(spec, args)
    return workload, quantized


def _deployed_workload(args):
    from qnnrepair.formats.deployed import load_deployed
    from qnnrepair.pipeline import prepare_deployed

    if args.model is not None or args.weights is not None:
        raise QnnRepairError(f"{args.quantized} carries its model: leave out --model and "
                             "--weights")
    model = load_deployed(args.quantized, args.float_model)
    workload = prepare_deployed(model, args.data, args.test_data, n_repair=args.n_repair,
                                n_validation=args.n_validation, n_test=args.n_test,
                                seed=args.seed, validation_data=args.validation_data,
                                mean=args.mean, std=args.std, label_offset=args.label_offset,
                                size=image_size(args))
    return workload, model


def quantized_of(args, workload, quantized):
    from qnnrepair.quantization import quantize

    if quantized is not None:
        return quantized
    return quantize(workload.model, quant_config(args), workload.images("repair"),
                    model_spec=workload.model_spec, seed=args.seed, show_progress=args.progress)


def image_size(args):
    from qnnrepair.data.resizing import ImageSize

    return ImageSize(getattr(args, "resize", None), getattr(args, "crop", None))


def sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.stem + suffix)


