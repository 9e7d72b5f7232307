"""Tiny float ONNX models and their QDQ copies from ONNX Runtime's quantize_static, for tests.

`OpsNet` holds every op a CIFAR ResNet / MobileNetV2 export uses beside the convolutions
(residual Add, ReLU, ReLU6 as Clip, depthwise conv, Concat, MaxPool, uneven Pad, AveragePool,
Reshape, Gemm), the ReduceMean of a TFLite float reference's MEAN and its input scaling (a
Mul by a constant, whose constant ORT quantizes); testing.TinyConvNet adds GlobalAveragePool
and Flatten.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qnnrepair.testing import example_inputs


class OpsNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(16, 8, 3, stride=2)
        self.linear = nn.Linear(40, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x * 1.25)))
        y = self.pw(F.relu6(self.dw(x))) + x
        z = torch.cat([y, F.max_pool2d(x, 3, 1, 1)], dim=1)
        z = F.relu(self.conv2(F.pad(z, (0, 1, 0, 1))))  # 9x9 -> 4x4
        z = torch.cat([F.avg_pool2d(z, 2).reshape(-1, 32), z.mean(dim=(2, 3))], dim=1)
        return self.linear(z)


class SigmoidNet(nn.Module):
    """A conv then an op outside the supported table."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.sigmoid(self.conv(x)).mean(dim=(2, 3)))


def ops_net(seed: int = 0) -> OpsNet:
    torch.manual_seed(seed)
    model = OpsNet()
    model.bn1.running_mean.uniform_(-0.5, 0.5)
    model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export_float(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example_inputs(1),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def quantize_qdq(float_path: Path, qdq_path: Path, per_channel: bool, images: torch.Tensor,
                 unsigned: bool = False) -> Path:
    """ONNX Runtime's quantize_static, QDQ format; int8 weights and activations (its default)
    or uint8 for both (`unsigned`: asymmetric weight grid)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": images[i:i + 16].numpy()}
                                 for i in range(0, len(images), 16)])

        def get_next(self):
            return next(self.batches, None)

    kind = QuantType.QUInt8 if unsigned else QuantType.QInt8
    import logging
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" warnings
    try:
        quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=kind, weight_type=kind)
    finally:
        logging.getLogger().setLevel(level)
    return qdq_path


def ort_run(path: Path, images: torch.Tensor, optimization: str = "disable") -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                                        if optimization == "disable"
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
