"""AdaRound (Nagel et al., ICML 2020, "Up or down? Adaptive rounding for post-training
quantization"), written from the paper.

Layer by layer in forward order, each weight chooses floor(w/s) or floor(w/s) + 1 through a
continuous variable V and the rectified sigmoid

    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    W~   = s * (floor(w/s) + h(V))

minimizing, with Adam (lr 1e-3) over V only,

    E_x ||W x - W~ x~||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta),   lambda = 0.01

- Reconstruction ("asymmetric" variant, paper section 4.2 / eq. 25 without the activation
  function): x~ is the input the QUANTIZED model feeds the layer, with every earlier layer
  already rounded and the layer's own 8-bit (or whatever) input quantization applied; the target
  W x + b is the float (BN-folded) layer's output on the float model's own input. The quantized
  side adds the layer's int32 bias as quantized (dequantized, not learned). The objective is
  the layer's pre-activation (the ResNet's second conv of a block is followed by the residual
  sum, not directly by a ReLU, so the paper's f_a is left out everywhere).
  ||.||^2 is the squared error summed over output channels, averaged over images and output
  positions (the convention of the paper's reference implementations); with a plain mean over
  channels too the regularizer (lambda * number of weights) would swamp the reconstruction
  term and the rounding would collapse to round-to-nearest.
- beta is annealed linearly from 20 to 2 after a warm start: the first 20% of the iterations
  optimize the reconstruction alone.
- V starts where h(V) equals the fractional part of w/s (the rounding is initially the float
  weight itself, not a rounding).
- Batches of 32 images drawn from all calibration images; each layer's quantized inputs and
  float targets for all calibration images are computed once and kept (`reconstruction.py`):
  as activations (memory: two layer activations for N images, e.g. 2 x 65 MB for a 16x32x32
  ResNet layer at N = 1,000), or, for a convolution whose patches are short against its map
  (MobileNetV2's 1x1 and depthwise layers at 112x112), as per-image statistics of the same
  quadratic error, which make a step cost kilo- instead of giga-operations.
- `max_images` calibrates on that many of the images, spread evenly (None: all): each layer's
  inputs are computed by running the model up to it, so the capture costs about L/2 forward
  passes over the calibration images.
- `iters` defaults to 1,000 per layer to keep CPU time sane (about 2 CPU cores); the paper uses
  10,000 (20,000 for some). Pass `iters=10000` for the paper's setting.

Finally weight_int = floor(w/s) + (h(V) >= 0.5). w/s is clamped to [-qmax, qmax] first, so every
integer is on the grid and is floor or ceil of the clamped w/s (weights exactly on an integer,
including clipped ones, keep it).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator

import torch

from qnnrepair.baselines.capture import check_calibration, collect_layer
from qnnrepair.baselines.reconstruction import (
    Activations,
    Statistics,
    fits_statistics,
)
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.baselines.squant import scaled_weight
from qnnrepair.data.splits import spread
from qnnrepair.evaluation import batch_size_for
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel

logger = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = h for h in [0, 1) (finite: the stretch keeps it inside)."""
    p = (h - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1 - p))


@register_baseline("adaround")
def adaround(qmodel: QuantizedModel, calibration_images: torch.Tensor, *, seed: int = 0,
             show_progress: bool = False, iters: int = 1000, batch_size: int = 32,
             reg_weight: float = 0.01, lr: float = 1e-3, beta_start: float = 20.0,
             beta_end: float = 2.0, warm_start: float = 0.2,
             capture_batch_size: int | None = None,
             max_images: int | None = None) -> QuantizedModel:
    """A copy of `qmodel` with every layer's weight rounding learned by AdaRound."""
    images = check_calibration(calibration_images, "adaround")
    if max_images is not None:
        images = images[torch.from_numpy(spread(len(images), max_images))]
    capture_batch_size = capture_batch_size or batch_size_for(images, 250)
    out = qmodel.copy()
    bar = progress(list(enumerate(out.layers)), show_progress, desc="adaround")
    for index, name in bar:
        started = time.process_time()
        layer = out.layer(name)
        problem = layer_problem(layer, layer.dequantized_bias(), _pairs(
            out.model, layer, qmodel.float_model, qmodel.float_layer(name), images,
            capture_batch_size))
        weight = qmodel.float_layer(name).weight.detach()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        q, losses = learn_rounding(layer, weight, problem, generator=generator,
                                   iters=iters, batch_size=batch_size, reg_weight=reg_weight,
                                   lr=lr, beta_start=beta_start, beta_end=beta_end,
                                   warm_start=warm_start)
        layer.weight_int.copy_(q.to(torch.int8))
        logger.info("adaround %s: reconstruction %.4g (before %.4g), %.1f CPU s",
                    name, losses["adaround"], losses["before"], time.process_time() - started)
    return out


def layer_problem(layer, bias: torch.Tensor,
                  pairs: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Activations | Statistics:
    """The layer's reconstruction error over all (quantized input, float target) batches: as
    per-image statistics where they are smaller than the activations, else the activations."""
    first = next(pairs)
    if fits_statistics(layer, first[0].shape[1:], first[1].shape[1]):
        problem = Statistics(layer, bias)
        for inputs, targets in itertools.chain([first], pairs):
            problem.add(inputs, targets)
        return problem
    batches = [first, *pairs]
    return Activations(layer, torch.cat([b[0] for b in batches]),
                       torch.cat([b[1] for b in batches]), bias)


def _pairs(model, layer, float_model, float_layer, images: torch.Tensor,
           batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of images: the layer's quantized input in `model` (earlier layers as they are
    now) and the float layer's output in `float_model`."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        yield (collect_layer(model, layer, batch, len(batch), output=False,
                             transform=layer.quantize_input),
               collect_layer(float_model, float_layer, batch, len(batch), output=True))


class SoftRounding:
    """One layer's AdaRound variable V and what is computed from it (shared with QDrop).

    base = floor(clamp(w/s, -qmax, qmax)); weights whose w/s is already an integer are not
    movable (nothing to choose). V starts where h(V) equals the fractional part of w/s.
    """

    def __init__(self, layer, weight: torch.Tensor) -> None:
        x = scaled_weight(weight, layer.weight_scale, layer.qmax)
        self.base = torch.floor(x)
        frac = x - self.base
        self.movable = (frac > 0).float()  # an integer w/s has nothing to choose
        self.scale = layer.weight_scale.reshape(-1, *([1] * (weight.dim() - 1))).float()
        self.base_f = self.base.float()
        self.v = inverse_rectified_sigmoid(frac.float()).requires_grad_(True)

    def soft_weight(self) -> torch.Tensor:
        """s * (floor(w/s) + h(V)): the relaxed real weight the optimizer sees."""
        return (self.base_f + rectified_sigmoid(self.v) * self.movable) * self.scale

    def regularizer(self, beta: float) -> torch.Tensor:
        """sum(1 - |2 h(V) - 1|^beta) over the movable weights (without lambda)."""
        h = rectified_sigmoid(self.v)
        return ((1 - (2 * h - 1).abs().pow(beta)) * self.movable).sum()

    @torch.no_grad()
    def integers(self) -> torch.Tensor:
        """floor(w/s) + (h(V) >= 0.5), int64: every value is floor or ceil of clamp(w/s)."""
        up = (rectified_sigmoid(self.v).double() >= 0.5).double() * self.movable.double()
        return (self.base + up).long()

    def __repr__(self) -> str:
        return f"SoftRounding({tuple(self.v.shape)}, {int(self.movable.sum())} movable)"


def annealed_beta(step: int, iters: int, n_warm: int, beta_start: float,
                  beta_end: float) -> float | None:
    """beta for the rounding regularizer at `step`: None during the warm start (no
    regularizer), then linear from beta_start down to beta_end."""
    if step < n_warm:
        return None
    progress_after_warm = (step - n_warm) / max(iters - n_warm, 1)
    return beta_end + (beta_start - beta_end) * (1 - progress_after_warm)


def learn_rounding(layer, weight: torch.Tensor, problem: Activations | Statistics, *,
                   generator: torch.Generator, iters: int, batch_size: int, reg_weight: float,
                   lr: float, beta_start: float, beta_end: float, warm_start: float
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """AdaRound integers (int64) for one layer, and the reconstruction error of the layer's
    integers before (round to nearest, as quantized) and after, on up to 256 images."""
    rounding = SoftRounding(layer, weight)
    optimizer = torch.optim.Adam([rounding.v], lr=lr)
    n_warm = int(warm_start * iters)
    n = len(problem)
    for step in range(iters):
        pick = torch.randperm(n, generator=generator)[:batch_size]
        loss = problem.error(pick, rounding.soft_weight())
        beta = annealed_beta(step, iters, n_warm, beta_start, beta_end)
        if beta is not None:
            loss = loss + reg_weight * rounding.regularizer(beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        q = rounding.integers()
        check = slice(0, min(n, 256))
        losses = {"before": float(problem.error(check, layer.dequantized_weight())),
                  "adaround": float(problem.error(check, q.float() * rounding.scale))}
    return q, losses
