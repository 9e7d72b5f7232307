"""qnnrepair: repair quantized neural networks by fault localization and linear programming."""

__version__ = "0.1.0"
