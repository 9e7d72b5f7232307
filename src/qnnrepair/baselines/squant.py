"""SQuant (Guo et al., ICLR 2022, "SQuant: On-the-fly data-free quantization via diagonal
Hessian approximation"), written from the paper's description.

SQuant approximates the Hessian of the loss with respect to one layer's weights by three
nested levels, element (E), kernel (K) and output channel (C), and minimizes

    sum_elements d^2  +  sum_kernels (sum_{k} d)^2  +  sum_channels (sum_{c} d)^2

over the rounding perturbations d = q - w/s (q integer, d in (-1, 1): floor or ceil). Its
on-the-fly algorithm needs no data and no gradients; what is implemented here:

- E: round to nearest (|d| <= 0.5 each), the quantizer's own rounding.
- K: in each kernel (one input channel's k x k taps of one output channel; one weight for a
  Linear layer) let e = sum d. If |e| > 0.5, flip n = ceil(|e| - 0.5) elements to their other
  neighbour in the direction that reduces |e| (down when e > 0), choosing the elements whose
  perturbation points most in e's direction: flipping d to d - 1 raises d^2 by 1 - 2d, least for
  the largest d. Afterwards e is in (-0.5, 0.5].
- C: in each output channel let e_c = sum of its kernels' e. If |e_c| > 0.5, pick the
  n = ceil(|e_c| - 0.5) kernels whose e points most in e_c's direction (flipping a kernel moves
  its e by 1, which costs least for the largest e) and flip, in each, the one element whose
  perturbation points most in that direction. Afterwards e_c is in (-0.5, 0.5] and every
  flipped kernel's e is in (-1, -0.5] (or [0.5, 1)): both levels cannot be within 0.5 at once,
  since moving a kernel sum of at most 0.5 by 1 leaves it at least 0.5 away from 0.

Guarantees (tested): every integer is floor or ceil of clamp(w/s, -qmax, qmax); per output
channel |sum d| <= 0.5; per kernel |sum d| < 1, and <= 0.5 in kernels the C step left alone.
Weights clipped by the scale (MSE clipping) are measured from the clamp, so their clipping error
is not counted as rounding error and they never move. There is always an element to flip
(|d| <= 0.5 after E makes n at most the number of elements pointing the right way). Ties are
broken by position (stable sort). The calibration images are ignored.
"""

from __future__ import annotations

import logging

import torch

from qnnrepair.baselines.registry import register_baseline
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel

logger = logging.getLogger(__name__)

# Accumulated perturbations are sums of float64 fractions: a sum of exactly 0.5 may come out
# as 0.5 + 1e-15, which must not trigger a flip.
_EPS = 1e-9


@register_baseline("squant")
def squant(qmodel: QuantizedModel, calibration_images: torch.Tensor | None = None, *,
           seed: int = 0, show_progress: bool = False, kernel: bool = True,
           channel: bool = True) -> QuantizedModel:
    """A copy of `qmodel` with every layer's weights rounded by SQuant (E, K and C levels;
    `kernel=False` / `channel=False` switch a level off: SQuant-E is both off)."""
    out = qmodel.copy()
    for name in progress(out.layers, show_progress, desc="squant"):
        layer = out.layer(name)
        weight = qmodel.float_layer(name).weight.detach()
        q = squant_round(weight, layer.weight_scale, layer.qmax, kernel=kernel, channel=channel)
        changed = int((q != layer.weight_int.long()).sum())
        layer.weight_int.copy_(q.to(torch.int8))
        logger.debug("%s: %d of %d weights flipped from round-to-nearest", name, changed, q.numel())
    return out


def scaled_weight(weight: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """w / s per output channel, in float64, clamped to the grid [-qmax, qmax]."""
    s = scale.double().reshape(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(weight.double() / s, -qmax, qmax)


def squant_round(weight: torch.Tensor, scale: torch.Tensor, qmax: int, *, kernel: bool = True,
                 channel: bool = True) -> torch.Tensor:
    """SQuant integers (int64, shape of `weight`) for `weight` with per-channel `scale`."""
    x = scaled_weight(weight, scale, qmax)
    # (out, in, taps): a kernel is one (out, in) pair; a Linear weight has one tap per kernel.
    x3 = x.reshape(x.shape[0], x.shape[1] if x.dim() > 1 else 1, -1)
    q = torch.round(x3)
    if kernel:
        q = q - _flip(q - x3)
    if channel:
        q = q - _flip_channels(q - x3)
    return q.reshape(x.shape).long()


def _flip(d: torch.Tensor) -> torch.Tensor:
    """Flips (+1 = one step down, -1 = one step up) that bring each last-dim group's sum of
    perturbations `d` into (-0.5, 0.5], taking the elements that point most in its direction."""
    total = d.sum(dim=-1, keepdim=True)
    direction = torch.sign(total)
    n_flips = torch.clamp(torch.ceil(total.abs() - 0.5 - _EPS), min=0)
    score = d * direction  # > 0: flipping this element reduces |total|
    rank = _rank_descending(score)
    chosen = (rank < n_flips) & (score > 0)
    return chosen.double() * direction


def _flip_channels(d: torch.Tensor) -> torch.Tensor:
    """C level: per output channel, one more flip in each of the kernels chosen by `_flip` on
    the kernel sums."""
    kernel_sums = d.sum(dim=-1)  # (out, in)
    kernel_flips = _flip(kernel_sums)  # (out, in): +1 / -1 / 0
    direction = kernel_flips[..., None]
    score = d * direction
    first = _rank_descending(score) == 0
    return (first & (score > 0)).double() * direction


def _rank_descending(score: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last dim, 0 = largest (ties: first position first)."""
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(score.shape[-1]).expand_as(order).contiguous())
    return rank
