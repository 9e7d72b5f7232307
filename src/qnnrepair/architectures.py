"""Does qnnrepair handle this architecture? Every step of the tool on one model, or its refusal.

`check_architecture(model, images)` runs, on a float model and a few images: quantization at
W8A8 and W4A8 (with the quantizer's self-check), the float reference against the model's own
output, W8A8 top-1 agreement with float, `localize` with the gradient and with Ochiai, a short
repair, and an ONNX QDQ export checked in ONNX Runtime. Each step gives a result or the one-line
refusal qnnrepair prints; anything else (a traceback) is recorded as a crash, which is a bug.

`ARCHITECTURES` names the models as timm and torchvision write them, built with random weights
(nothing is downloaded), BatchNorm statistics made non-trivial by a few train-mode passes on
random data, and the classifier's bias centred so that predictions spread over the classes.
They need the `models` extra (timm, torchvision). `benchmarks/architectures.py` writes the
table in docs/ARCHITECTURES.md from these.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qnnrepair.errors import QnnRepairError

logger = logging.getLogger(__name__)

STEPS = ("float", "w8a8", "w4a8", "agreement", "gradient", "ochiai", "repair", "onnx")
# The ONNX files a user brings: exported by torch.onnx, quantized by ONNX Runtime.
EXPORTERS = ("torchscript", "dynamo")
QDQ_STEPS = ("export", "per-tensor", "per-channel")

# name -> (library, name in it). timm's names are timm.create_model's; torchvision's are
# torchvision.models functions.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "resnet18": ("timm", "resnet18"),
    "resnet50": ("timm", "resnet50"),
    "mobilenetv2_100": ("timm", "mobilenetv2_100"),
    "mobilenetv3_small_100": ("timm", "mobilenetv3_small_100"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "tf_efficientnet_lite0": ("timm", "tf_efficientnet_lite0"),
    "regnetx_002": ("timm", "regnetx_002"),
    "resnetv2_50x1_bit": ("timm", "resnetv2_50x1_bit"),
    "densenet121": ("timm", "densenet121"),
    "ghostnet_100": ("timm", "ghostnet_100"),
    "mnasnet_100": ("timm", "mnasnet_100"),
    "convnext_atto": ("timm", "convnext_atto"),
    "tv_resnet18": ("torchvision", "resnet18"),
    "tv_mobilenet_v2": ("torchvision", "mobilenet_v2"),
    "tv_shufflenet_v2_x0_5": ("torchvision", "shufflenet_v2_x0_5"),
}


def build_architecture(name: str, num_classes: int = 10, size: int = 64,
                       seed: int = 0) -> nn.Module:
    """The named architecture with random weights, BatchNorm statistics from 3 train-mode
    passes on random images of `size` pixels, in eval mode."""
    if name not in ARCHITECTURES:
        raise QnnRepairError(f"unknown architecture {name!r}: use one of "
                             f"{', '.join(ARCHITECTURES)}")
    library, arch = ARCHITECTURES[name]
    torch.manual_seed(seed)
    torchvision = import_torchvision()  # timm imports it too
    if library == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:  # running statistics = the passes' average, not 27 % of the way there
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size, generator=generator))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    _spread_classes(model, torch.randn(32, 3, size, size, generator=generator))
    return model


def _spread_classes(model: nn.Module, images: torch.Tensor) -> None:
    """A random-weight model often gives one class to every image. Subtracting the mean logit
    from the classifier's bias spreads its predictions over the classes, so that its own top-1
    labels make a task with several classes (the repair's validation refuses one class)."""
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if not classifier or classifier[0].bias is None:
        return
    with torch.no_grad():
        classifier[0].bias -= model(images).mean(0)


def import_torchvision():
    """torchvision, also where its C++ operators cannot load.

    PyPI's torchvision wheels are built against PyPI's CUDA torch; beside a CPU build of torch
    its operator library does not load, and `import torchvision` then fails while registering
    fake kernels for those operators (nms, roi_align, ...). Declaring the operators' names
    first lets the import finish: the model builders are pure Python and use none of them
    (calling one raises, as it would have)."""
    try:
        import torchvision

        return torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    import re
    import sys
    from importlib.util import find_spec

    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]
    source = Path(find_spec("torchvision").submodule_search_locations[0],
                  "_meta_registrations.py").read_text()
    names = set(re.findall(r'register_meta\("(\w+)"\)', source))
    names |= set(re.findall(r'register_fake\("torchvision::(\w+)"\)', source))
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in sorted(names):
        library.define(f"{op}(Tensor[] unavailable) -> Tensor")
    import_torchvision._library = library  # the definitions live as long as this object
    import torchvision

    return torchvision


def check_architecture(model: nn.Module, images: torch.Tensor, *, repair_neurons: int = 2,
                       seed: int = 0) -> dict[str, str]:
    """{step: result or "refused: <reason>" or "crash: <error>"} for each of STEPS.

    `images` are normalized float NCHW images the model runs on; half calibrate and repair,
    half validate. The labels are the float model's own top-1.
    """
    from qnnrepair.quantization import QuantConfig, quantize

    row: dict[str, str] = {}
    half = len(images) // 2
    calib, held = images[:half], images[half:]
    with torch.no_grad():
        reference = model(images)
    labels = reference.argmax(1)
    quantized = {}
    for setting in ("w8a8", "w4a8"):
        quantized[setting] = _step(row, setting, lambda s=setting: quantize(
            model, QuantConfig.from_setting(s), calib, model_spec="user:model", seed=seed),
            lambda q: f"{len(q.layers)} layers")
    w8 = quantized.get("w8a8")
    if w8 is None:
        for step in STEPS:
            row.setdefault(step, "not run (quantization refused)")
        return row
    _step(row, "float", lambda: _relative(reference, w8.float_model(images)),
          lambda d: f"max rel. diff {d:.1e}")
    _step(row, "agreement", lambda: _agreement(w8.model, images, reference),
          lambda a: f"{a:.1f} %")
    w4 = quantized.get("w4a8") or w8
    for metric in ("gradient", "ochiai"):
        _step(row, metric, lambda m=metric: _localize(w4, calib, labels[:half], m),
              lambda top: f"top {top}")
    _step(row, "repair", lambda: _repair(w4, calib, labels[:half], held, labels[half:],
                                         repair_neurons, seed), str)
    _step(row, "onnx", lambda: _onnx(w8, held), lambda a: f"ORT agreement {a:.1f} %")
    return row


def _step(row: dict, step: str, run: Callable, show: Callable):
    start = time.perf_counter()
    try:
        value = run()
    except OutsideFailure as err:
        row[step] = f"not qnnrepair: {err}"
        return None
    except QnnRepairError as err:
        row[step] = f"refused: {err}"
        return None
    except Exception as err:  # noqa: BLE001 (a crash is what this check exists to find)
        logger.debug("%s crashed:\n%s", step, traceback.format_exc())
        row[step] = f"crash: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
        return None
    row[step] = f"{show(value)} ({time.perf_counter() - start:.1f}s)"
    return value


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _agreement(model: nn.Module, images: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(images).argmax(1) == reference.argmax(1)).float().mean())


def _localize(qmodel, images, labels, metric: str) -> str:
    from qnnrepair.repair import RepairConfig
    from qnnrepair.repair.engine import fit_localizer

    localizer = fit_localizer(qmodel, images, labels, RepairConfig().replace(metric=metric))
    return str(localizer.ranking_[0])


def _repair(qmodel, images, labels, val_images, val_labels, neurons: int, seed: int) -> str:
    from qnnrepair.repair import Repairer, preset

    repairer = Repairer(preset("default", max_neurons=neurons, seed=seed))
    repairer.fit(qmodel, images, labels, val_images, val_labels)
    val = repairer.validation_accuracy_
    return (f"{len(repairer.changes_)} kept, V {val['quantized']:.1f} -> "
            f"{val['repaired']:.1f} %")


def _onnx(qmodel, images: torch.Tensor) -> float:
    from qnnrepair.export import check_onnx, export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "model.onnx")
        export_onnx(qmodel, path, images[:1])
        return 100.0 * check_onnx(path, qmodel, images)["agreement"]


def check_onnx_files(model: nn.Module, images: torch.Tensor, exporter: str, *,
                     repair_neurons: int = 2, seed: int = 0) -> dict[str, str]:
    """{step: result} for an ONNX file as a user makes one: `model` exported by torch.onnx
    (`exporter`: "torchscript" or "dynamo", opset 17, a dynamic batch) and quantized by ONNX
    Runtime's `quantize_static` (QDQ, MinMax, uint8 activations, int8 weights) per tensor and
    per channel; each QDQ file loaded beside the float file, its simulation's top-1 compared
    with ONNX Runtime's, repaired for `repair_neurons` neurons, written back and run again.
    Labels are the float model's top-1; half the images calibrate and repair, half validate."""
    row: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder, "model.onnx")
        exported = _step(row, "export", lambda: _outside("torch.onnx.export", export_float,
                                                         model, images[:1], float_path,
                                                         exporter),
                         lambda _: "ok")
        if exported is None and not float_path.exists():
            for step in QDQ_STEPS[1:]:
                row[step] = "not run (export failed)"
            return row
        for step in QDQ_STEPS[1:]:
            qdq_path = Path(folder, f"model.{step}.onnx")
            _step(row, step, lambda s=step, q=qdq_path: _qdq_round_trip(
                float_path, q, images, s == "per-channel", repair_neurons, seed), str)
    return row


class OutsideFailure(QnnRepairError):
    """A step of another tool (the exporter, ONNX Runtime's quantizer) failed: not qnnrepair's
    refusal nor its crash, and the table says so."""


def _outside(tool: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 (whatever the other tool raises)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the exporter's terminal colours
        first = (text.strip().splitlines() or [type(err).__name__])[0][:140]
        raise OutsideFailure(f"{tool} fails: {type(err).__name__}: {first}") from None


def export_float(model: nn.Module, example: torch.Tensor, path: Path,
                 exporter: str = "torchscript") -> bool:
    """`model` as a float ONNX file, as a user exports it: torch.onnx (`exporter`
    "torchscript" or "dynamo"), opset 17, input "input", output "logits", a dynamic batch."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=exporter == "dynamo",
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}
                          if exporter == "torchscript" else None,
                          dynamic_shapes=({0: torch.export.Dim("batch")},)
                          if exporter == "dynamo" else None)
    return True


def quantize_qdq(float_path: Path, qdq_path: Path, images: torch.Tensor, per_channel: bool,
                 batch_size: int = 32, **options) -> None:
    """ONNX Runtime's quantize_static (QDQ format, MinMax) of `float_path` into `qdq_path`,
    calibrated on `images` fed in batches to the graph input "input"; `options` pass on
    (activation_type, weight_type, ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": images[i:i + batch_size].numpy()}
                                 for i in range(0, len(images), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, **options)


def _qdq_round_trip(float_path: Path, qdq_path: Path, images: torch.Tensor, per_channel: bool,
                    neurons: int, seed: int) -> str:
    from onnxruntime.quantization import (
        QuantType,
    )

    from qnnrepair.formats.deployed import load_deployed, write_deployed
    from qnnrepair.formats.runtime import check_runtime
    from qnnrepair.repair import Repairer, preset

    half = len(images) // 2
    _outside("quantize_static", quantize_qdq, float_path, qdq_path, images[:half], per_channel,
             batch_size=1, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    deployed = load_deployed(qdq_path, float_path)
    with torch.no_grad():
        labels = deployed.float_model(images).argmax(1)
    before = check_runtime(qdq_path, deployed.model, images, labels)
    repairer = Repairer(preset("default", max_neurons=neurons, seed=seed)).fit(
        deployed, images[:half], labels[:half], images[half:], labels[half:])
    repaired_path = qdq_path.with_suffix(".repaired.onnx")
    write_deployed(repairer.repaired_, repaired_path)
    after = check_runtime(repaired_path, repairer.repaired_.model, images, labels)
    return (f"{len(deployed.layers)} layers; ORT = simulation on {100 * before.agreement:.0f} "
            f"% ({100 * after.agreement:.0f} % repaired, {len(repairer.changes_)} kept)")
