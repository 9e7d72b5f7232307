"""Closed-form least-squares refit of the last layer: a sanity check, not a method of a paper.

With the quantized model's features H (the last layer's input as its integer kernel sees it,
on the calibration images) and the float model's logits Z (the float last layer on float
inputs), solve

    min_{W, b} ||H W^T + 1 b^T - Z||^2 + ridge * mean(diag(H^T H)) * ||W||^2

(the bias is not penalized; the tiny ridge only keeps the normal equations solvable when
features are collinear), then put W on the layer's grid with its existing per-channel scale
(round to nearest, clamp to [-qmax, qmax]) and b on the int32 grid of scale s_w * s_x.
H^T H and H^T Z are accumulated in float64 batch by batch, so memory does not grow with N.
"""

from __future__ import annotations

import logging

import torch

from qnnrepair.baselines.capture import check_calibration, collect_layer
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.errors import QnnRepairError
from qnnrepair.quantization import QuantizedModel, QuantLinear
from qnnrepair.quantization.modules import round_bias
from qnnrepair.quantization.primitives import quantize_symmetric

logger = logging.getLogger(__name__)


@register_baseline("least_squares_last_layer")
def least_squares_last_layer(qmodel: QuantizedModel, calibration_images: torch.Tensor, *,
                             seed: int = 0, show_progress: bool = False, ridge: float = 1e-6,
                             batch_size: int = 250) -> QuantizedModel:
    """A copy of `qmodel` whose last (Linear) layer is refit to the float logits."""
    weight, bias = fit_last_layer(qmodel, calibration_images, ridge=ridge, batch_size=batch_size)
    out = qmodel.copy()
    layer = out.layer(out.layers[-1])
    layer.weight_int.copy_(quantize_symmetric(weight, layer.weight_scale, layer.weight_bits))
    layer.bias_int.copy_(round_bias(bias, layer.bias_scale()))
    return out


def fit_last_layer(qmodel: QuantizedModel, calibration_images: torch.Tensor, *,
                   ridge: float = 1e-6, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """The real-valued refit (weight (out, in), bias (out,)), float32, before quantization."""
    images = check_calibration(calibration_images, "least_squares_last_layer")
    name = qmodel.layers[-1]
    layer = qmodel.layer(name)
    if not isinstance(layer, QuantLinear):
        raise QnnRepairError(
            f"least_squares_last_layer needs a Linear last layer, {name} is "
            f"{type(layer).__name__}; use another baseline for this model"
        )
    if ridge < 0:
        raise QnnRepairError(f"ridge must be >= 0, got {ridge}")
    d = layer.weight_int.shape[1]
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    cross = torch.zeros(d + 1, layer.out_features, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        h = _with_ones(collect_layer(qmodel.model, layer, batch, len(batch), output=False,
                                     transform=layer.quantize_input))
        z = collect_layer(qmodel.float_model, qmodel.float_layer(name), batch, len(batch),
                          output=True).double()
        gram.add_(h.T @ h)
        cross.add_(h.T @ z)
    penalty = torch.zeros(d + 1, dtype=torch.float64)
    penalty[:d] = ridge * max(float(gram.diagonal()[:d].mean()), 1e-12)
    theta = torch.linalg.lstsq(gram + torch.diag(penalty), cross, driver="gelsd").solution
    weight, bias = theta[:d].T.contiguous(), theta[d]
    logger.info("least-squares refit of %s on %d images (ridge %g)", name, len(images), ridge)
    return weight.float(), bias.float()


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    x = x.double().reshape(len(x), -1)
    return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
