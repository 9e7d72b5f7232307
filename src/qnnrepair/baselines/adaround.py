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
  float targets for all calibration images are computed once and cached (memory: two layer
  activations for N images, e.g. 2 x 65 MB for a 16x32x32 ResNet layer at N = 1,000).
- `max_images` calibrates on that many of the images, spread evenly (None: all): the cache is
  two activations of one layer for every calibration image, which at ImageNet size (a
  96x112x112 MobileNetV2 layer is 4.8 MB per image) does not fit for 1,000 images.
- `iters` defaults to 1,000 per layer to keep CPU time sane (about 2 CPU cores); the paper uses
  10,000 (20,000 for some). Pass `iters=10000` for the paper's setting.

Finally weight_int = floor(w/s) + (h(V) >= 0.5). w/s is clamped to [-qmax, qmax] first, so every
integer is on the grid and is floor or ceil of the clamped w/s (weights exactly on an integer,
including clipped ones, keep it).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from qnnrepair.baselines.capture import check_calibration, collect_layer
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.baselines.squant import scaled_weight
from qnnrepair.data.splits import spread
from qnnrepair.evaluation import batch_size_for
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantConv2d, QuantizedModel

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
        inputs = collect_layer(out.model, layer, images, capture_batch_size, output=False,
                               transform=lambda t, layer=layer: cached(layer.quantize_input(t)))
        targets = collect_layer(qmodel.float_model, qmodel.float_layer(name), images,
                                capture_batch_size, output=True, transform=cached)
        weight = qmodel.float_layer(name).weight.detach()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        q, losses = learn_rounding(layer, weight, inputs, targets, generator=generator,
                                   iters=iters, batch_size=batch_size, reg_weight=reg_weight,
                                   lr=lr, beta_start=beta_start, beta_end=beta_end,
                                   warm_start=warm_start)
        layer.weight_int.copy_(q.to(torch.int8))
        logger.info("adaround %s: reconstruction %.4g (before %.4g), %.1f CPU s",
                    name, losses["adaround"], losses["before"], time.process_time() - started)
    return out


def cached(t: torch.Tensor) -> torch.Tensor:
    """A layer activation as the rounding loop reads it a thousand times: feature maps
    channels-last, where CPU convolutions and their weight gradients run 1.3 to 2.5 times
    faster (MobileNetV2's 112x112 layers; same values up to float rounding)."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def layer_output(layer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The layer's pre-activation on its (already quantized) input with a given real weight."""
    if isinstance(layer, QuantConv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, bias)


def reconstruction_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over output channels, averaged over images and positions."""
    return (out - target).pow(2).sum(dim=1).mean()


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


def learn_rounding(layer, weight: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, *,
                   generator: torch.Generator, iters: int, batch_size: int, reg_weight: float,
                   lr: float, beta_start: float, beta_end: float, warm_start: float
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """AdaRound integers (int64) for one layer, and the reconstruction error of the layer's
    integers before (round to nearest, as quantized) and after, on up to 256 cached images."""
    rounding = SoftRounding(layer, weight)
    bias = layer.dequantized_bias()
    optimizer = torch.optim.Adam([rounding.v], lr=lr)
    n_warm = int(warm_start * iters)
    n = len(inputs)
    for step in range(iters):
        pick = torch.randperm(n, generator=generator)[:batch_size]
        soft = rounding.soft_weight()
        loss = reconstruction_error(layer_output(layer, inputs[pick], soft, bias), targets[pick])
        beta = annealed_beta(step, iters, n_warm, beta_start, beta_end)
        if beta is not None:
            loss = loss + reg_weight * rounding.regularizer(beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        q = rounding.integers()
        check = slice(0, min(n, 256))
        losses = {
            "before": float(reconstruction_error(
                layer_output(layer, inputs[check], layer.dequantized_weight(), bias),
                targets[check])),
            "adaround": float(reconstruction_error(
                layer_output(layer, inputs[check], q.float() * rounding.scale, bias),
                targets[check])),
        }
    return q, losses
