"""Run a deployed file in its own runtime (LiteRT for .tflite, ONNX Runtime for ONNX QDQ) and
compare with the simulation: the numbers a user of the file will see."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import predict


@dataclass(frozen=True)
class RuntimeCheck:
    """Top-1 of the file in its runtime and of the simulation on the same images, and how
    many images the two predict alike."""

    runtime: str
    n_images: int
    runtime_accuracy: float
    sim_accuracy: float
    agreement: float

    def __str__(self) -> str:
        return (f"{self.runtime} top-1 {self.runtime_accuracy:.2f}% on {self.n_images} images "
                f"(simulation {self.sim_accuracy:.2f}%, same prediction on "
                f"{100 * self.agreement:.2f}%)")


def runtime_predictions(path: str | Path, images: torch.Tensor,
                        optimized: bool = True) -> tuple[str, np.ndarray]:
    """(runtime name, top-1 per image) of the file at `path` on `images`, which are the
    pipeline's input tensors (NCHW; for a .tflite file the stored input integers).
    `optimized=False` runs an ONNX model as written (ONNX Runtime's graph optimizations off:
    no fused integer kernels); LiteRT has no such switch."""
    if Path(path).suffix.lower() == ".tflite":
        return "LiteRT", _litert_predictions(path, images)
    return ("ONNX Runtime" if optimized else "ONNX Runtime (as written)",
            _onnxruntime_predictions(path, images, optimized=optimized))


def simulated_predictions(simulation: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The simulation's top-1, like with like: on the file's own output (a softmax on a 1/256
    grid can tie where the logits do not, and the runtime takes the first of tied classes)."""
    logits = getattr(simulation, "return_logits", None)
    if logits is not None:
        simulation.return_logits = False
    try:
        return predict(simulation, images, batch_size=50).numpy()
    finally:
        if logits is not None:
            simulation.return_logits = logits


def check_runtime(path: str | Path, simulation: torch.nn.Module, images: torch.Tensor,
                  labels: torch.Tensor, optimized: bool = True,
                  simulated: np.ndarray | None = None) -> RuntimeCheck:
    """`simulated`: simulated_predictions(simulation, images) when already known."""
    runtime, got = runtime_predictions(path, images, optimized)
    sim = simulated_predictions(simulation, images) if simulated is None else simulated
    want = labels.numpy()
    return RuntimeCheck(runtime, len(want), 100.0 * float((got == want).mean()),
                        100.0 * float((sim == want).mean()), float((got == sim).mean()))


def _litert_predictions(path, images: torch.Tensor) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise QnnRepairError("checking a .tflite file needs LiteRT: pip install "
                             "'qnnrepair[tflite]'") from None
    interpreter = Interpreter(str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    pixels = images.permute(0, 2, 3, 1).round().numpy().astype(inp["dtype"])
    predictions = []
    for image in pixels:  # the file's batch size is 1
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.asarray(predictions)


# ONNX Runtime's graph optimization levels by the names qnnrepair's options use.
ORT_OPTIMIZATIONS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                     "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def onnxruntime_session(path, optimization: str = "all"):
    """An ONNX Runtime CPU session of `path` (a file, or a serialized model as bytes): the one
    way qnnrepair opens a file in ONNX Runtime (the export check and the deployed-file checks
    alike). As many intra-op threads as torch, so a check does not oversubscribe a shared
    machine; warnings off."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise QnnRepairError("running an ONNX file needs ONNX Runtime: pip install "
                             "'qnnrepair[export]'") from None
    if optimization not in ORT_OPTIMIZATIONS:
        raise QnnRepairError(f"unknown ONNX Runtime optimization {optimization!r}: use one of "
                             f"{', '.join(ORT_OPTIMIZATIONS)}")
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise QnnRepairError(f"ONNX file {path} not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not a warning per unused constant
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               ORT_OPTIMIZATIONS[optimization])
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        source = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (ORT raises its own types)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        what = "the model" if isinstance(path, bytes) else path
        raise QnnRepairError(f"ONNX Runtime cannot load {what} ({reason})") from None


def _onnxruntime_predictions(path, images: torch.Tensor, optimized: bool = True) -> np.ndarray:
    if len(images) == 0:
        return np.empty(0, np.int64)
    return onnxruntime_outputs(path, images, "all" if optimized else "disable").argmax(axis=1)


def onnxruntime_outputs(path, images: torch.Tensor, optimization: str = "all",
                        batch_size: int = 100) -> np.ndarray:
    """The first output of the model at `path` (a file, or a serialized model as bytes) on
    `images`, run by ONNX Runtime (onnxruntime_session) in batches."""
    session = onnxruntime_session(path, optimization)
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:  # a file exported for a fixed batch (often 1)
        batch_size = fixed
    return np.concatenate([session.run(None, {name: images[i:i + batch_size].numpy()})[0]
                           for i in range(0, len(images), batch_size)])
