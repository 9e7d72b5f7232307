"""Repair by linear programming, guarded by validation (docs/DESIGN.md, section 4).

Names are loaded lazily: LP worker processes import `qnnrepair.repair.lp`, which needs neither
torch nor the rest of this package, and start much faster without them.
"""

from importlib import import_module

_EXPORTS = {
    "PRESETS": "config", "RepairConfig": "config", "preset": "config",
    "LocalizationConfig": "config", "LPConfig": "config", "AcceptanceConfig": "config",
    "ExecutionConfig": "config", "LAYER_CHOICES": "layers", "layer_names": "layers",
    "NeuronChange": "candidate", "Repairer": "engine", "Step": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qnnrepair.repair' has no attribute {name!r}")
    return getattr(import_module(f"qnnrepair.repair.{_EXPORTS[name]}"), name)
