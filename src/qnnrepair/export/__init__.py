"""Deployment: the quantized (or repaired) model as ONNX QDQ, checked in ONNX Runtime."""

from qnnrepair.export.onnx import check_onnx, export_model, export_onnx

__all__ = ["check_onnx", "export_model", "export_onnx"]
