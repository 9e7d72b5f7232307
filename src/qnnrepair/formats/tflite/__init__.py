"""Fully integer .tflite files: read into a PyTorch simulation that predicts like LiteRT (plus
its float reference), and write back with only the integer weight and bias buffers changed.

Needs the optional extra: pip install "qnnrepair[tflite]".
"""

from qnnrepair.formats.tflite.graph import TFLiteGraph, TFLiteModel, load_tflite
from qnnrepair.formats.tflite.layers import TFLITE_LAYERS, TFLiteConv2d, TFLiteLinear
from qnnrepair.formats.tflite.reader import TFLiteFile, read_tflite
from qnnrepair.formats.tflite.writer import write_tflite

__all__ = ["TFLITE_LAYERS", "TFLiteConv2d", "TFLiteFile", "TFLiteGraph", "TFLiteLinear",
           "TFLiteModel", "load_tflite", "read_tflite", "write_tflite"]
