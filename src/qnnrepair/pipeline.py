"""The whole job in two calls: `prepare` a workload, then `run_repair` on it.

    workload = prepare("resnet20", "ckpt.th", "train.npz", "test.npz", n_repair=1000, ...)
    result = run_repair(workload, QuantConfig.from_setting("w4a8"), preset("default"))
    print(result.report.to_text())

The test set is evaluated only after the repair has finished: no decision ever sees it.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from qnnrepair.data import Dataset, Splits, check_compatible, load_dataset, make_splits, to_tensor
from qnnrepair.data.resizing import ImageSize
from qnnrepair.data.splits import SPLIT_NAMES
from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import per_class_accuracy, predict
from qnnrepair.formats.model import DeployedModel
from qnnrepair.models import ModelInfo, load_model, model_info
from qnnrepair.quantization import QuantConfig, QuantizedModel, quantize
from qnnrepair.quantization.checks import check_logits
from qnnrepair.repair import RepairConfig, Repairer
from qnnrepair.report import RepairReport

logger = logging.getLogger(__name__)


@dataclass
class Workload:
    """A float model and its three disjoint data splits. R and V are kept as normalized tensors
    (a repair reads them throughout); T as its uint8 pixels, normalized when asked for (it is
    read once, at the end), so an ImageNet workload holds ~0.5 GiB less than all as tensors."""

    model_spec: str
    model: nn.Module
    info: ModelInfo
    splits: InitVar[Splits]
    seed: int

    def __post_init__(self, splits: Splits) -> None:
        self.split_description = splits.describe()
        self.class_names = list(splits.test.classes or ())
        self._labels = {name: torch.from_numpy(ds.labels).long()
                        for name, ds in zip(SPLIT_NAMES, (splits.repair, splits.validation,
                                                          splits.test))}
        self._tensors = {name: to_tensor(ds.images, self.info.mean, self.info.std)
                         for name, ds in (("repair", splits.repair),
                                          ("validation", splits.validation))}
        self._test_pixels = splits.test.images

    def images(self, split: str) -> torch.Tensor:
        if split == "test":
            return to_tensor(self._test_pixels, self.info.mean, self.info.std)
        return self._tensors[split]

    def labels(self, split: str) -> torch.Tensor:
        return self._labels[split]


def user_model_info(spec: str, data: Dataset, num_classes: int,
                    mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> ModelInfo:
    """A user's own model gets its input shape from the data, pixels scaled to [0, 1] and then
    normalized with `mean` and `std` per channel (default 0 and 1: no normalization)."""
    h, w, c = data.images.shape[1:]
    return ModelInfo(spec, (c, h, w), num_classes,
                     tuple(float(v) for v in mean) if mean is not None else (0.0,) * c,
                     tuple(float(v) for v in std) if std is not None else (1.0,) * c)


def probe_classes(model: nn.Module, model_spec: str, data: Dataset,
                  mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> int:
    """Run a user's model on one image: its output size is the class count."""
    info = user_model_info(model_spec, data, 1, mean, std)
    images = to_tensor(data.images[:1], info.mean, info.std)
    try:
        with torch.no_grad():
            logits = model.eval()(images)
    except Exception as err:  # noqa: BLE001 (whatever the user's forward raises)
        raise QnnRepairError(f"model {model_spec} fails on images of shape "
                             f"{'x'.join(map(str, data.images.shape[1:]))}: "
                             f"{(str(err).splitlines() or [''])[0][:160]}; give images the model "
                             "accepts (--resize / --crop for image folders)") from None
    check_logits(logits, len(images))  # a tuple or dict output: one line
    if logits.dim() != 2:
        raise QnnRepairError(f"model {model_spec} returns shape {tuple(logits.shape)}, "
                             "expected logits (batch, classes)")
    return logits.shape[1]


def _zoo_info(model_spec: str, num_classes: int, mean: Sequence[float] | None,
              std: Sequence[float] | None) -> ModelInfo:
    """A zoo model's info; `mean`/`std` may only repeat its own normalization, since every
    later command (and the quantized file) uses the zoo's."""
    info = model_info(model_spec, num_classes)
    for name, given, own in (("mean", mean, info.mean), ("std", std, info.std)):
        if given is not None and not (len(given) == len(own) and all(
                abs(float(a) - b) <= 1e-6 for a, b in zip(given, own))):
            raise QnnRepairError(
                f"zoo model {model_spec} normalizes with {name} "
                f"{' '.join(f'{v:g}' for v in own)} (its checkpoints are trained so), not "
                f"{' '.join(f'{float(v):g}' for v in given)}; --mean/--std are for your own "
                "module:factory models: leave them out")
    return info


def prepare(model_spec: str, weights: str | Path | None, data: str | Path,
            test_data: str | Path | None = None, *, n_repair: int = 1000,
            n_validation: int | None = None, n_test: int | None = None, seed: int = 0,
            num_classes: int = 10, model: nn.Module | None = None,
            validation_data: str | Path | None = None, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, size: ImageSize | None = None) -> Workload:
    """Load the model (unless given) and the data, check they fit, and draw the splits.

    R comes from `data`'s training split. V comes from `validation_data` when given, else
    from `test_data`'s test split (disjoint from T, which is the rest of it), else from
    `data` (with a warning: the float model may have been trained on it). T is `test_data`'s
    test split, or further images of `data` when no test data is given.

    `mean` and `std` (one value per channel, applied after scaling pixels to [0, 1]) are the
    input normalization of a user's `module:factory` model, as it was trained; without them
    it gets [0, 1] input. A zoo model always uses its own; passing others is an error.
    `size` resizes and crops every image as it is loaded (users' raw photos).
    """
    if n_repair == 0:
        raise QnnRepairError("the repair set is empty (n_repair 0): it calibrates the quantizer "
                             "and drives localization and the LPs; draw at least one image")
    user = ":" in model_spec
    if not user:
        _zoo_info(model_spec, num_classes, mean, std)  # refuse before loading anything
    pool, test, validation = _load_data(data, test_data, validation_data, size)
    if model is None:
        model = load_model(model_spec, weights, num_classes=num_classes)
    if user:
        info = user_model_info(model_spec, pool, probe_classes(model, model_spec, pool, mean, std),
                               mean, std)
    else:
        info = _zoo_info(model_spec, num_classes, mean, std)
    return _workload(model_spec, model, info, (pool, test, validation), n_repair, n_validation,
                     n_test, seed)


def prepare_deployed(model: DeployedModel, data: str | Path, test_data: str | Path | None = None,
                     *, n_repair: int = 1000, n_validation: int | None = None,
                     n_test: int | None = None,
                     seed: int = 0, validation_data: str | Path | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     label_offset: int | None = None, size: ImageSize | None = None
                     ) -> Workload:
    """`prepare` for a deployed file (formats.deployed.load_deployed): the input normalization
    comes from the file unless `mean`/`std` are given, the class count from its output.
    `label_offset` is added to every label; None means 1 for a model with 1,001 outputs
    (TensorFlow's ImageNet models keep output 0 for "background"), else 0."""
    from qnnrepair.formats.deployed import input_normalization

    if n_repair == 0:
        raise QnnRepairError("the repair set is empty (n_repair 0): it drives localization and "
                             "the LPs; draw at least one image")
    datasets = _load_data(data, test_data, validation_data, size)
    if mean is None and std is None:
        mean, std = input_normalization(model)
    spec = str(model.path)
    classes = probe_classes(model.model, spec, datasets[0], mean, std)
    if label_offset is None:
        label_offset = 1 if classes == 1001 else 0
        if label_offset:
            logger.info("%s has 1,001 outputs: output 0 read as 'background', labels + 1", spec)
    datasets = tuple(_shift_labels(d, label_offset) for d in datasets)
    info = user_model_info(spec, datasets[0], classes, mean, std)
    _check_simulation(model, to_tensor(datasets[0].images[:2], info.mean, info.std))
    return _workload(spec, model.float_model, info, datasets, n_repair, n_validation, n_test,
                     seed)


def _check_simulation(model: DeployedModel, images: torch.Tensor) -> None:
    """The simulation against the file's runtime before any repair, on the user's images: a
    .tflite file's integers tensor by tensor against LiteRT (formats.tflite.check), an ONNX
    file's two graphs node by node against ONNX Runtime (formats.onnx_qdq.check)."""
    tflite = model.config.format == "tflite"
    runtime = "ai_edge_litert" if tflite else "onnxruntime"
    if importlib.util.find_spec(runtime) is None:
        logger.warning("%s is not installed: the simulation of %s is not checked against it",
                       runtime, model.path)
        return
    if tflite:
        from qnnrepair.formats.tflite.check import check_against_litert

        check_against_litert(model.path, model.model, images)
        return
    from qnnrepair.formats.onnx_qdq.check import check_against_runtime

    check_against_runtime(model.float_path, model.float_model, images, quantized=False)
    check_against_runtime(model.path, model.model, images, quantized=True)


def _load_data(data, test_data, validation_data, size=None
               ) -> tuple[Dataset, Dataset | None, Dataset | None]:
    pool = load_dataset(data, split="train", size=size)
    test = load_dataset(test_data, split="test", size=size) if test_data is not None else None
    validation = load_dataset(validation_data, split="test", size=size) \
        if validation_data is not None else None
    return pool, test, validation


def _shift_labels(dataset: Dataset | None, offset: int) -> Dataset | None:
    if dataset is None or offset == 0:
        return dataset
    names = None if dataset.classes is None else ("background",) * offset + dataset.classes
    return Dataset(dataset.images, dataset.labels + offset, names)


def _workload(spec, model, info, datasets, n_repair, n_validation, n_test, seed) -> Workload:
    pool, test, validation = datasets
    for dataset in datasets:
        if dataset is not None:
            check_compatible(dataset, info)
    splits = make_splits(pool, test, n_repair, n_validation, n_test, seed, validation)
    return Workload(spec, model, info, splits, seed)


def embedded_default() -> tuple[Path, Path]:
    """The demo's shipped model (CIFAR-10 ResNet-20, BSD-2) and CIFAR-10 subset."""
    assets = resources.files("qnnrepair") / "assets"
    return Path(str(assets / "resnet20-cifar10.pt")), Path(str(assets / "cifar10-demo.npz"))


def demo_workload(seed: int = 0) -> Workload:
    weights, data = embedded_default()
    return prepare("resnet20", weights, data, data, n_repair=1000, n_validation=1000,
                   seed=seed)


@dataclass
class RepairResult:
    quantized: QuantizedModel
    repaired: QuantizedModel
    repairer: Repairer
    report: RepairReport


def run_repair(workload: Workload, quant_config: QuantConfig | None,
               repair_config: RepairConfig, *, quantized: QuantizedModel | None = None,
               show_progress: bool = False) -> RepairResult:
    """Quantize with `quant_config` (or take `quantized`: then pass None or its own config),
    repair on R guarded by V, report R / V / T."""
    if quantized is not None and quant_config not in (None, quantized.config):
        raise QnnRepairError("run_repair got a quantized model and a different quant_config: "
                             "pass quant_config=None to repair the given model as it is")
    if quantized is None and quant_config is None:
        raise QnnRepairError("run_repair needs a quant_config or a quantized model")
    timings = {}
    start = time.perf_counter()
    if quantized is None:
        quantized = quantize(workload.model, quant_config, workload.images("repair"),
                             model_spec=workload.model_spec, seed=workload.seed,
                             show_progress=show_progress)
    timings["quantize"] = time.perf_counter() - start
    repairer = Repairer(repair_config).fit(
        quantized, workload.images("repair"), workload.labels("repair"),
        workload.images("validation"), workload.labels("validation"), show_progress)
    timings.update(repairer.timings_)
    start = time.perf_counter()
    report = build_report(workload, quantized, repairer, timings)
    timings["evaluate"] = time.perf_counter() - start
    return RepairResult(quantized, repairer.repaired_, repairer, report)


def build_report(workload: Workload, quantized: QuantizedModel, repairer: Repairer,
                 timings: dict[str, float]) -> RepairReport:
    models = {"float": quantized.float_model, "quantized": quantized.model,
              "repaired": repairer.repaired_.model}
    unchanged = not repairer.changes_  # the repaired model is the quantized one: scored once
    preds = {}
    for split in SPLIT_NAMES:
        images = workload.images(split)  # T is normalized on each call: once here
        preds.update({(split, name): predict(m, images) for name, m in models.items()
                      if not (unchanged and name == "repaired")})
        if unchanged:
            preds[split, "repaired"] = preds[split, "quantized"]
    acc = {split: {name: 100.0 * (preds[split, name] == workload.labels(split)).double()
                   .mean().item() for name in models} for split in SPLIT_NAMES}
    per_class = {name: per_class_accuracy(preds["test", name], workload.labels("test"),
                                          workload.info.num_classes) for name in models}
    scores = repairer.scores_
    top = [(str(n), float(scores[n.layer][n.index]) if scores else float("nan"))
           for n in repairer.ranking_[:20]]
    return RepairReport(
        model=workload.model_spec, quant_config=quantized.config.to_dict(),
        repair_config=repairer.config.to_dict(), seed=workload.seed,
        sizes={s: len(workload.labels(s)) for s in SPLIT_NAMES}, accuracy=acc,
        top_neurons=top, changes=[c.to_dict() for c in repairer.changes_],
        steps=[s.to_dict() for s in repairer.steps_], timings=timings, per_class=per_class,
        splits=workload.split_description,
        blame={name: [float(s) for s in values] for name, values in (scores or {}).items()},
        validation_divergence=repairer.validation_divergence_,
        class_names=workload.class_names)
