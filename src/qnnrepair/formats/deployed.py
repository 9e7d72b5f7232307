"""A deployed file as the pipeline sees it: loaded by its suffix, the input normalization it
implies, and the repaired copy written in the same format.

    model = load_deployed("mobilenet_v2.tflite")            # or ("m_qdq.onnx", "m.onnx")
    ... Repairer(config).fit(model, ...) ...
    write_deployed(repairer.repaired_, "repaired.tflite")   # only weight/bias integers differ

A loaded model returns logits (TFLite: the input of its final SOFTMAX), as every model in
qnnrepair does: the guard and the blame compare soft predictions.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from qnnrepair.errors import QnnRepairError
from qnnrepair.formats.model import DeployedModel

logger = logging.getLogger(__name__)

SUFFIXES = {".tflite": "tflite", ".onnx": "onnx-qdq"}


def is_deployed(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in SUFFIXES


def load_deployed(path: str | Path, float_path: str | Path | None = None) -> DeployedModel:
    """The simulation of a .tflite file, or of an ONNX QDQ file beside the float ONNX model it
    was quantized from (`float_path`)."""
    kind = SUFFIXES.get(Path(path).suffix.lower())
    if kind == "tflite":
        from qnnrepair.formats.tflite import load_tflite

        if float_path is not None:
            raise QnnRepairError("--float-model is for ONNX QDQ models; a .tflite file carries "
                                 "its float reference (its dequantized weights): leave it out")
        model = load_tflite(path)
        model.model.return_logits = model.float_model.return_logits = True
    elif kind == "onnx-qdq":
        from qnnrepair.formats.onnx_qdq import load_onnx_qdq

        if float_path is None:
            raise QnnRepairError(f"{path} is an ONNX model: also give the float ONNX model it "
                                 "was quantized from (--float-model FILE.onnx)")
        model = load_onnx_qdq(float_path, path)
    else:
        raise QnnRepairError(f"{path}: unknown deployed format (suffix {Path(path).suffix!r}); "
                             "give a .tflite or a QDQ .onnx file")
    return model


def runtime_scorer(graph):
    """`runtime_logits(graph, images)` for a graph whose candidates the guard scores in the
    file's own runtime (an ONNX QDQ simulation: formats/onnx_qdq/scoring.py says why), else
    None (a .tflite simulation computes LiteRT's integers to the bit)."""
    path = getattr(graph, "path", None)
    if not is_deployed(path) or SUFFIXES[Path(path).suffix.lower()] != "onnx-qdq":
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        logger.warning("onnxruntime is not installed: candidates of %s are scored in the "
                       "simulation, which can round differently", path)
        return None
    from qnnrepair.formats.onnx_qdq.scoring import runtime_logits, scores_in_runtime

    return runtime_logits if scores_in_runtime(graph) else None


def input_normalization(model: DeployedModel) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that turn pixels scaled to [0, 1] into the model's input, where
    the file says: a .tflite file with an integer input takes the stored integers (uint8: the
    pixels; int8: pixels - 128). Raises if the file does not say (then pass --mean/--std)."""
    graph = model.model
    q = getattr(graph, "input_q", None)
    if q is None:
        raise QnnRepairError(f"{Path(model.path).name} does not say how its input is normalized "
                             "(a float input): pass --mean and --std as the model was trained")
    channels = graph.input_shape[-1]
    offset = 0.0 if q.qmin == 0 else 128.0  # int8 input: the pixel minus 128
    return (offset / 255.0,) * channels, (1.0 / 255.0,) * channels


def write_deployed(model: DeployedModel, out_path: str | Path) -> list[str]:
    """Write `model`'s integers into a copy of the file it was read from; returns the names of
    the tensors (TFLite) or initializers (ONNX) whose values changed."""
    if model.config.format == "tflite":
        from qnnrepair.formats.tflite import write_tflite

        return write_tflite(model.path, model, out_path)
    from qnnrepair.formats.onnx_qdq import write_qdq

    return write_qdq(model.path, model, out_path)


def output_format_matches(in_path: str | Path, out_path: str | Path) -> None:
    """Refuse an output whose suffix is not the input file's (before any work)."""
    want = Path(in_path).suffix.lower()
    if Path(out_path).suffix.lower() != want:
        raise QnnRepairError(f"--output {out_path} must be a {want} file: the repaired model is "
                             f"written in the format it was read from")
