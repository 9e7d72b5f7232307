"""ONNX QDQ models from ONNX Runtime's quantize_static, with their float ONNX models: read into
a PyTorch simulation that predicts like ONNX Runtime (plus the float reference), and write back
with only the integer weight and bias initializers changed.

Needs the optional extra: pip install "qnnrepair[export]".
"""

from qnnrepair.formats.onnx_qdq.build import SUPPORTED_OPS
from qnnrepair.formats.onnx_qdq.graph import OnnxGraph, OnnxQDQModel, load_onnx_qdq
from qnnrepair.formats.onnx_qdq.layers import QDQ_LAYERS, QDQConv2d, QDQLinear
from qnnrepair.formats.onnx_qdq.reader import OnnxFile, read_onnx
from qnnrepair.formats.onnx_qdq.writer import write_qdq

__all__ = ["QDQ_LAYERS", "SUPPORTED_OPS", "OnnxFile", "OnnxGraph", "OnnxQDQModel", "QDQConv2d",
           "QDQLinear", "load_onnx_qdq", "read_onnx", "write_qdq"]
