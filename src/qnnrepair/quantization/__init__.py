"""Deployment-faithful integer quantization (docs/DESIGN.md, section 2).

Names are loaded lazily: the CLI reads the choices in `qnnrepair.quantization.config` while
building its parser, and `qnnrepair --help` should not wait for torch to load.
"""

from importlib import import_module

_EXPORTS = {
    "LayerBits": "config", "QuantConfig": "config",
    "fold_batchnorm": "fold",
    "QuantConv2d": "modules", "QuantLinear": "modules",
    "QuantizedModel": "quantizer", "batches": "quantizer", "quantize": "quantizer",
    "load_quantized": "serialization", "save_quantized": "serialization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qnnrepair.quantization' has no attribute {name!r}")
    return getattr(import_module(f"qnnrepair.quantization.{_EXPORTS[name]}"), name)
