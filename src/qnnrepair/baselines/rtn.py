"""Round-to-nearest: the quantized model as the quantizer made it, selectable like the others.

RTN with MSE-optimal weight clipping is not a separate baseline: it is the QuantConfig choice
`weight_clipping="mse"`, made before `quantize`.
"""

from __future__ import annotations

import torch

from qnnrepair.baselines.registry import register_baseline
from qnnrepair.quantization import QuantizedModel


@register_baseline("rtn")
def rtn(qmodel: QuantizedModel, calibration_images: torch.Tensor | None = None, *,
        seed: int = 0, show_progress: bool = False) -> QuantizedModel:
    """A copy of `qmodel`, integers unchanged (round to nearest, as quantized)."""
    return qmodel.copy()
