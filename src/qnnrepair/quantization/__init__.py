"""Deployment-faithful integer quantization (DESIGN section 2)."""

from qnnrepair.quantization.config import LayerBits, QuantConfig
from qnnrepair.quantization.fold import fold_batchnorm
from qnnrepair.quantization.modules import QuantConv2d, QuantLinear
from qnnrepair.quantization.quantizer import QuantizedModel, batches, quantize
from qnnrepair.quantization.serialization import load_quantized, save_quantized

__all__ = [
    "LayerBits", "QuantConfig", "QuantConv2d", "QuantLinear", "QuantizedModel", "batches",
    "fold_batchnorm", "load_quantized", "quantize", "save_quantized",
]
