"""One layer's reconstruction error on calibration images, as AdaRound minimizes it.

    error(images, W) = sum over output channels, mean over images and positions, of
                       (W x~ + b - W_f x - b_f)^2

where x~ is the layer's quantized input and W_f x + b_f the float layer's output (the target).
Two ways to hold the same error:

- `Activations` caches x~ and the target for every image and computes the layer's output at
  each step: exact, and cheap where a map has few positions per weight (CIFAR's deep layers).
- `Statistics` keeps, per image, the Gram matrix of the layer's input patches, G = sum p p^T,
  their products with the target, B = sum (t - b) p^T, and sum (t - b)^2. The error of a batch
  is then sum_c (w_c G w_c - 2 w_c B_c) + sum (t - b)^2, with no pass over positions: at
  MobileNetV2's 112x112 maps a step costs kilo- instead of giga-operations, for the same value
  up to float rounding. Its memory per image grows with the square of a patch's length, so it
  is chosen only where it is smaller than the activations (`fits_statistics`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qnnrepair.quantization import QuantConv2d


def layer_output(layer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The layer's pre-activation on its (already quantized) input with a given real weight."""
    if isinstance(layer, QuantConv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, bias)


def reconstruction_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over output channels, averaged over images and positions."""
    return (out - target).pow(2).sum(dim=1).mean()


class Activations:
    """The error from cached inputs and targets, the layer run at each step."""

    def __init__(self, layer, inputs: torch.Tensor, targets: torch.Tensor,
                 bias: torch.Tensor) -> None:
        self.layer, self.bias = layer, bias
        self.inputs, self.targets = _channels_last(inputs), _channels_last(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def error(self, pick: torch.Tensor | slice, weight: torch.Tensor) -> torch.Tensor:
        out = layer_output(self.layer, self.inputs[pick], weight, self.bias)
        return reconstruction_error(out, self.targets[pick])


class Statistics:
    """The error from per-image sufficient statistics (float64) of a convolution's patches."""

    def __init__(self, layer, bias: torch.Tensor) -> None:
        self.layer, self.bias = layer, bias.double()
        self.gram: list[torch.Tensor] = []  # per batch of images: (n, groups, f, f)
        self.cross: list[torch.Tensor] = []  # (n, groups, out per group, f)
        self.norm: list[torch.Tensor] = []  # (n,)
        self.positions = 0

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Take the statistics of one batch of images (their activations are then dropped)."""
        layer = self.layer
        groups, n = layer.groups, len(inputs)
        patches = F.unfold(inputs.double(), tuple(layer.weight_int.shape[2:]),
                           _pair(layer.dilation), _pair(layer.padding),
                           _pair(layer.stride))  # (n, c_in * k * k, positions)
        self.positions = patches.shape[-1]
        patches = patches.reshape(n, groups, -1, self.positions)
        residual = targets.double().reshape(n, targets.shape[1], -1) - self.bias[:, None]
        residual = residual.reshape(n, groups, -1, self.positions)
        self.gram.append(torch.einsum("ngfl,nghl->ngfh", patches, patches))
        self.cross.append(torch.einsum("ngol,ngfl->ngof", residual, patches))
        self.norm.append(residual.pow(2).sum(dim=(1, 2, 3)))

    def __len__(self) -> int:
        return sum(len(g) for g in self.gram)

    def error(self, pick: torch.Tensor | slice, weight: torch.Tensor) -> torch.Tensor:
        if len(self.gram) > 1:  # one tensor per statistic once all images are in
            self.gram, self.cross, self.norm = ([torch.cat(s)] for s in
                                                (self.gram, self.cross, self.norm))
        gram, cross = self.gram[0][pick].sum(0), self.cross[0][pick].sum(0)
        n = len(self.norm[0][pick])
        w = weight.double().reshape(self.layer.groups, -1, gram.shape[-1])
        quadratic = torch.einsum("gof,gfh,goh->", w, gram, w)
        total = quadratic - 2 * (w * cross).sum() + self.norm[0][pick].sum()
        return (total / (n * self.positions)).float()


def fits_statistics(layer, input_shape: torch.Size, output_channels: int) -> bool:
    """Whether a layer's per-image statistics are smaller than its two activations: a
    convolution (zero padding given as sizes) whose patches are short against its positions."""
    if not isinstance(layer, QuantConv2d) or isinstance(layer.padding, str):
        return False
    c_in, (h, w) = input_shape[0], input_shape[1:]
    (kh, kw), (sh, sw) = layer.weight_int.shape[2:], _pair(layer.stride)
    (ph, pw), (dh, dw) = _pair(layer.padding), _pair(layer.dilation)
    positions = ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1) * ((w + 2 * pw - dw * (kw - 1) - 1)
                                                                // sw + 1)
    patch = c_in // layer.groups * kh * kw
    per_image = layer.groups * patch * patch + output_channels * patch
    return per_image < c_in * h * w + output_channels * positions


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Feature maps channels-last, where CPU convolutions and their weight gradients run 1.3 to
    2.5 times faster (same values up to float rounding)."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
