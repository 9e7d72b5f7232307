"""Readers and writers for the quantized files people deploy (TFLite, ONNX QDQ)."""
