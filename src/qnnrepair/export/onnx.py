"""ONNX QDQ export of a quantized (or repaired) model, and its check in ONNX Runtime.

The exported graph holds the model's integers as they are: every quantized Conv/Linear reads
an int8 weight initializer and an int32 bias initializer through DequantizeLinear, and its
input goes through QuantizeLinear/DequantizeLinear (uint8) with the calibrated scale and zero
point. Everything else (ReLU, adds, pooling, shortcuts) is what torch.onnx writes for the float
structure. See `qnnrepair.export.qdq` for how the QDQ nodes are produced.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.export.qdq import qdq_module
from qnnrepair.fileio import atomic_path
from qnnrepair.formats.runtime import onnxruntime_session
from qnnrepair.quantization.fold import set_module
from qnnrepair.quantization.quantizer import QuantizedModel

logger = logging.getLogger(__name__)

# Per-axis QuantizeLinear/DequantizeLinear (per-channel weight scales) came in opset 13.
MIN_OPSET = 13
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_INSTALL = "install it with: pip install 'qnnrepair[export]'"


def export_onnx(qmodel: QuantizedModel, path: str | os.PathLike, example_input: torch.Tensor,
                opset: int = 17) -> None:
    """Write `qmodel.model` to `path` as an ONNX QDQ model with a dynamic batch dimension.

    `example_input` is a normalized float NCHW batch the model runs on (it fixes every
    dimension but the batch). `qmodel` is not changed: the quantized layers are swapped for
    export stand-ins in a deep copy. The file appears whole or not at all.
    """
    onnx = _require("onnx")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise QnnRepairError(f"opset must be at least {MIN_OPSET} (per-channel "
                             f"QuantizeLinear), got {opset!r}")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise QnnRepairError("example_input must be a float tensor (a normalized NCHW batch), "
                             f"got {type(example_input).__name__}")
    with atomic_path(path) as tmp:  # checks the output folder before any work
        model = export_model(qmodel)
        proto = onnx.load_from_string(_trace(model, example_input.detach()[:1].float(), opset))
        _own_initializers(proto)
        _check_qdq(proto, qmodel, onnx.TensorProto)
        _add_metadata(proto, qmodel)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as err:  # noqa: BLE001 (ValidationError, inference errors)
            raise QnnRepairError(f"exported ONNX model is invalid ({_first_line(err)}): please "
                                 "report this with the model") from None
        tmp.write_bytes(proto.SerializeToString())
    logger.info("exported %r to %s (opset %d)", qmodel, path, opset)


def export_model(qmodel: QuantizedModel) -> torch.nn.Module:
    """A deep copy of `qmodel.model` with every quantized layer replaced by its QDQ stand-in."""
    model = copy.deepcopy(qmodel.model).eval()
    for name in qmodel.layers:
        set_module(model, name, qdq_module(model.get_submodule(name)))
    return model


def _trace(model: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript and has no custom-symbolic hook; it is still the one that can write
            # exactly the QDQ nodes we ask for.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # Strided slices (the ResNet pad shortcut) are not constant-folded: harmless.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
    except Exception as err:  # noqa: BLE001 (the exporter raises many types)
        raise QnnRepairError(f"ONNX export failed for input of shape {tuple(example.shape)} "
                             f"({_first_line(err)}): check that the model runs on example_input"
                             ) from None
    return buffer.getvalue()


def _own_initializers(proto) -> None:
    """Give every layer its own named scale / zero-point initializers.

    The exporter stores equal tensors once (say, the zero point 0 of every layer after a ReLU)
    and feeds the other users through Identity nodes. QDQ consumers (ORT's own fusions before
    constant folding, TensorRT, ...) want constant initializers on QuantizeLinear /
    DequantizeLinear, so each Identity of an initializer becomes a copy of it under its name.
    """
    initializers = {t.name: t for t in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy_ = proto.graph.initializer.add()
            copy_.CopyFrom(initializers[node.input[0]])
            copy_.name = node.output[0]
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _check_qdq(proto, qmodel: QuantizedModel, tensor_proto) -> None:
    """Every quantized layer must have become one QuantizeLinear and two DequantizeLinear of
    integer initializers (a constant-folding exporter could otherwise turn them into floats)."""
    dtypes = {t.name: t.data_type for t in proto.graph.initializer}
    integers = [dtypes.get(n.input[0]) for n in proto.graph.node
                if n.op_type == "DequantizeLinear"]
    counts = {"QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
              "int8 weights": integers.count(tensor_proto.INT8),
              "int32 biases": integers.count(tensor_proto.INT32)}
    for what, count in counts.items():
        if count != len(qmodel.layers):
            raise QnnRepairError(f"exported graph has {count} {what} for {len(qmodel.layers)} "
                                 "quantized layers: please report this with the model")


def _add_metadata(proto, qmodel: QuantizedModel) -> None:
    from qnnrepair import __version__

    proto.producer_name, proto.producer_version = "qnnrepair", __version__
    proto.doc_string = f"{qmodel!r}: QDQ export of integer weights (int8) and biases (int32)"
    meta = {"qnnrepair.setting": qmodel.config.setting,
            "qnnrepair.model_spec": qmodel.model_spec or "",
            "qnnrepair.layer_bits": ",".join(
                f"{n}:w{qmodel.layer(n).weight_bits}a{qmodel.layer(n).act_bits}"
                for n in qmodel.layers)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_onnx(path: str | os.PathLike, qmodel: QuantizedModel, images: torch.Tensor,
               labels: torch.Tensor | None = None, batch_size: int = 500,
               optimization: str = "all") -> dict:
    """Run the ONNX file in ONNX Runtime (CPU) and qnnrepair's simulation on the same images.

    Returns a dict with `n_images`, `agreement` (fraction of images with the same top-1
    prediction, 0..1), `n_disagree`, `max_abs_logit_diff`, `mean_abs_logit_diff`, and with
    `labels` also `sim_accuracy` and `onnx_accuracy` (percent, as
    `qnnrepair.evaluation.accuracy`). `optimization` is ONNX Runtime's graph optimization
    level; "all" (its default) may fuse QDQ groups into integer kernels, as a deployment would.
    ORT gets as many intra-op threads as torch (`torch.get_num_threads()`).
    """
    session = _session(Path(path), optimization)
    if len(images) == 0:
        raise QnnRepairError("no images to check the ONNX model on: give at least one")
    if labels is not None and len(labels) != len(images):
        raise QnnRepairError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise QnnRepairError(f"batch_size must be at least 1, got {batch_size}")
    input_name = session.get_inputs()[0].name
    model = qmodel.model.eval()
    n_agree = n_sim_correct = n_onnx_correct = 0
    max_diff, sum_diff = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].detach().float()
        with torch.no_grad():
            sim = model(batch)
        try:
            onnx_out = session.run(None, {input_name: batch.numpy()})[0]
        except Exception as err:  # noqa: BLE001 (ORT's Fail, InvalidArgument, ...)
            raise QnnRepairError(f"ONNX Runtime could not run {path} on images of shape "
                                 f"{tuple(batch.shape)} ({_first_line(err)})") from None
        ort_logits = torch.from_numpy(np.asarray(onnx_out))
        diff = (ort_logits - sim).abs()
        max_diff = max(max_diff, diff.max().item())
        sum_diff += diff.mean(dim=1).sum().item()
        sim_pred, ort_pred = sim.argmax(dim=1), ort_logits.argmax(dim=1)
        n_agree += int((sim_pred == ort_pred).sum())
        if labels is not None:
            batch_labels = labels[start:start + batch_size]
            n_sim_correct += int((sim_pred == batch_labels).sum())
            n_onnx_correct += int((ort_pred == batch_labels).sum())
    n = len(images)
    result = {"n_images": n, "agreement": n_agree / n, "n_disagree": n - n_agree,
              "max_abs_logit_diff": max_diff, "mean_abs_logit_diff": sum_diff / n}
    if labels is not None:
        result["sim_accuracy"] = 100.0 * n_sim_correct / n
        result["onnx_accuracy"] = 100.0 * n_onnx_correct / n
    logger.info("ONNX check of %s on %d images: agreement %.4f, max |logit diff| %.3g",
                path, n, result["agreement"], max_diff)
    return result


def _session(path: Path, optimization: str):
    _require("onnxruntime")
    return onnxruntime_session(path, optimization)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise QnnRepairError(f"ONNX export needs the {module} package: {_INSTALL}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
