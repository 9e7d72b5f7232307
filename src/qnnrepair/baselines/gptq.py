"""GPTQ (Frantar et al., ICLR 2023): rounding with second-order error feedback, layer by layer.

For one layer with float weight W (out x f, f = the length of an input patch) and the inputs X
its kernel receives on the calibration images (the quantized model's own input to the layer,
every earlier layer already done), GPTQ minimizes ||W X - Q X||^2 over Q on the layer's grid,
one input column at a time (the optimal-brain-quantization step):

    H = 2 X X^T + damping * mean(diag H) * I          (the Hessian of that error)
    for column j, in order of decreasing diag(H) ("act order"):
        q_j   = round_to_grid(w_j)
        e_j   = (w_j - q_j) / [H^-1]_jj
        w_k  -= e_j [H^-1]_jk     for the columns k not yet quantized

with H^-1 kept as the upper Cholesky factor of the inverse, so removing a quantized column is a
slice. Convolutions use their unfolded input patches as X; grouped and depthwise convolutions
one H per group, solved together as a batch. The grid is the layer's own (its per-channel or
per-tensor scale and bit width, as the quantizer set them); biases stay as quantized.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from qnnrepair.baselines.capture import check_calibration, stream_layer
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.data.splits import spread
from qnnrepair.errors import QnnRepairError
from qnnrepair.evaluation import batch_size_for
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantConv2d, QuantizedModel

logger = logging.getLogger(__name__)


@register_baseline("gptq")
def gptq(qmodel: QuantizedModel, calibration_images: torch.Tensor, *, seed: int = 0,
         show_progress: bool = False, damping: float = 0.01, act_order: bool = True,
         max_images: int | None = 256, batch_size: int | None = None) -> QuantizedModel:
    """A copy of `qmodel` whose integer weights are GPTQ's, from the float weights and the
    Hessians of each layer's quantized inputs on `max_images` of `calibration_images` (spread
    evenly; None: all)."""
    images = check_calibration(calibration_images, "gptq")
    if max_images is not None:
        images = images[torch.from_numpy(spread(len(images), max_images))]
    batch_size = batch_size or batch_size_for(images, 64)
    out = qmodel.copy()
    for name in progress(out.layers, show_progress, desc="gptq"):
        layer = out.layer(name)
        hessian = layer_hessian(out.model, layer, images, batch_size)
        weight = qmodel.float_layer(name).weight.detach().double()
        groups = layer.groups if isinstance(layer, QuantConv2d) else 1
        w = weight.reshape(groups, weight.shape[0] // groups, -1)
        scale = layer.weight_scale.double().reshape(groups, -1)
        q = gptq_quantize(w, hessian, scale, layer.qmax, damping, act_order)
        layer.weight_int.copy_(q.reshape(layer.weight_int.shape).to(torch.int8))
    logger.info("gptq: %d layers on %d images", len(out.layers), len(images))
    return out


def layer_hessian(model: torch.nn.Module, layer, images: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """2 X X^T / n of the layer's quantized input patches, per group: (groups, f, f), float64."""
    groups = layer.groups if isinstance(layer, QuantConv2d) else 1
    total: list[torch.Tensor] = []
    count = [0]

    def add(_start: int, x: torch.Tensor) -> None:
        patches = input_patches(layer, layer.quantize_input(x))  # (groups, f, positions)
        gram = torch.einsum("gfp,ghp->gfh", patches, patches)
        if total:
            total[0] += gram
        else:
            total.append(gram)
        count[0] += patches.shape[-1]

    stream_layer(model, layer, images, batch_size, add, output=False)
    f = total[0].shape[-1]
    return (2.0 * total[0] / count[0]).reshape(groups, f, f)


def input_patches(layer, x: torch.Tensor) -> torch.Tensor:
    """The columns the layer's kernel multiplies its weight with: (groups, f, positions)."""
    if not isinstance(layer, QuantConv2d):
        return x.double().reshape(-1, x.shape[-1]).T[None]
    patches = F.unfold(x.double(), tuple(layer.weight_int.shape[2:]), _pair(layer.dilation),
                       _numeric_padding(layer), _pair(layer.stride))  # (n, c*k*k, L)
    n, length = patches.shape[0], patches.shape[-1]
    patches = patches.reshape(n, layer.groups, -1, length).permute(1, 2, 0, 3)
    return patches.reshape(layer.groups, -1, n * length)


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, qmax: int,
                  damping: float = 0.01, act_order: bool = True) -> torch.Tensor:
    """Integer weights for w (groups, out, f) given H (groups, f, f) and the per-row grid step
    `scale` (groups, out): GPTQ's column-by-column rounding with error feedback."""
    w, h = w.double().clone(), hessian.double().clone()
    groups, _, f = w.shape
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0  # inputs that are always 0: their weights do not matter
    diag[dead] = 1.0
    w[dead[:, None, :].expand_as(w)] = 0.0
    diag += damping * diag.mean(dim=1, keepdim=True)
    order = (torch.argsort(diag, dim=1, descending=True, stable=True) if act_order
             else torch.arange(f).expand(groups, f))
    w = torch.gather(w, 2, order[:, None, :].expand_as(w))
    h = torch.gather(torch.gather(h, 1, order[:, :, None].expand_as(h)), 2,
                     order[:, None, :].expand_as(h))
    u = _inverse_cholesky(h)  # upper factor of H^-1
    s = scale.double()  # (groups, out)
    q = torch.empty_like(w)
    for j in range(f):
        column = w[:, :, j]
        q[:, :, j] = torch.clamp(torch.round(column / s), -qmax, qmax)
        err = (column - q[:, :, j] * s) / u[:, j, j][:, None]
        w[:, :, j + 1:] -= err[:, :, None] * u[:, j, j + 1:][:, None, :]
    back = torch.argsort(order, dim=1)
    return torch.gather(q, 2, back[:, None, :].expand_as(q))


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, raising the damping if H is not positive definite."""
    extra = 0.0
    for _ in range(8):
        try:
            lower = torch.linalg.cholesky(h + extra * torch.eye(h.shape[-1], dtype=h.dtype))
            inverse = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(torch.diagonal(h, dim1=1, dim2=2).mean()))
    raise QnnRepairError("gptq: a layer's input Hessian is not positive definite even with "
                         "damping; give more calibration images")


def _numeric_padding(layer) -> tuple[int, int]:
    padding = layer.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(_pair(layer.dilation), layer.weight_int.shape[2:])]
        if any(t % 2 for t in totals):
            raise QnnRepairError("gptq: a 'same'-padded convolution with an even kernel pads "
                                 "unevenly; it is not supported")
        return tuple(t // 2 for t in totals)
    return _pair(padding)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
