"""What the LPs are built from: a layer's quantized input and the float pre-activation target.

For a neuron, the quantized pre-activation is linear in its own integer weights once the layer's
(dequantized) input is fixed, so recording that input on the repair set is all the LP needs. Conv
layers contribute a few sampled output positions per image (one row each): rows stay bounded
whatever the image size. Which positions a layer samples depends only on the seed, the layer's
output size and how many images it sees, so the float model's rows (recorded once per fit) and
the quantized model's (recorded for each candidate) line up row by row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qnnrepair.evaluation import batch_size_for
from qnnrepair.hooks import capture, on_forward, run_until_stop, stop_after
from qnnrepair.quantization import QuantConv2d, QuantizedModel


@dataclass
class LayerRecord:
    """Rows of one layer on the repair set.

    `inputs` (rows, fan_in): the dequantized input patch each row's neuron sees (for grouped
    convs, all groups side by side: `columns(c)` picks neuron c's); `float_out` (rows, out):
    pre-activations of the float layer; `image` (rows,): which repair image each row came from.
    """

    inputs: np.ndarray
    float_out: np.ndarray
    image: np.ndarray
    fan_in: int
    groups: int
    out_channels: int

    def columns(self, channel: int) -> slice:
        group = channel // (self.out_channels // self.groups)
        return slice(group * self.fan_in, (group + 1) * self.fan_in)


class RowSampler:
    """Which rows of one layer to record: for each image, `positions` output positions drawn
    from its own generator (seeded `seed`), batch after batch in image order; for a linear
    layer, one row per image."""

    def __init__(self, layer, n_rows: int, n_images: int, seed: int) -> None:
        self.layer = layer
        self.positions = max(1, n_rows // max(n_images, 1))
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int, out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image in batch, flat output position) per row of a batch of n images."""
        if self.layer.weight_int.dim() != 4:  # a linear layer (ours or a deployed file's)
            return torch.arange(n), None
        size = out_hw[0] * out_hw[1]
        pick = torch.randint(size, (n, min(self.positions, size)), generator=self.generator)
        return torch.arange(n)[:, None].expand_as(pick).reshape(-1), pick.reshape(-1)


@torch.no_grad()
def record_layers(qmodel: QuantizedModel, layers: list[str], images: torch.Tensor,
                  rows_per_layer: int, seed: int, batch_size: int | None = None,
                  float_out: dict[str, np.ndarray] | None = None) -> dict[str, LayerRecord]:
    """Record every layer in `layers` in one batched pass of each model over `images`,
    stopping each pass after the deepest of them.

    `float_out` may give each layer's float rows from an earlier call with the same images,
    rows and seed (the sampled positions are then the same): a repair changes only the
    quantized model, so the float pass is skipped."""
    known = float_out is not None and all(name in float_out for name in layers)
    if not known:
        float_out = record_float_rows(qmodel, layers, images, rows_per_layer, seed, batch_size)
    samplers = {name: RowSampler(qmodel.layer(name), rows_per_layer, len(images), seed)
                for name in layers}
    parts: dict[str, list[tuple]] = {name: [] for name in layers}
    modules = {name: qmodel.layer(name) for name in layers}
    for start, store in _batches(qmodel.model, modules, "input", qmodel.layers, images,
                                 batch_size):
        for name in layers:
            inputs, image = quantized_rows(modules[name], store[name], samplers[name])
            parts[name].append((inputs, image + start))
    return {name: layer_record(qmodel.layer(name), *map(np.concatenate, zip(*rows)),
                               float_out[name])
            for name, rows in parts.items()}


@torch.no_grad()
def record_float_rows(qmodel: QuantizedModel, layers: list[str], images: torch.Tensor,
                      rows_per_layer: int, seed: int, batch_size: int | None = None
                      ) -> dict[str, np.ndarray]:
    """The float model's pre-activations at the rows `record_layers` and `record_in_pass`
    sample with the same images, rows and seed: {layer: (rows, out)}, one batched pass."""
    samplers = {name: RowSampler(qmodel.layer(name), rows_per_layer, len(images), seed)
                for name in layers}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    modules = {name: qmodel.float_layer(name) for name in layers}
    for _, store in _batches(qmodel.float_model, modules, "output", qmodel.layers, images,
                             batch_size):
        for name in layers:
            out = store[name]
            image, position = samplers[name].draw(len(out), tuple(out.shape[2:]))
            parts[name].append(output_rows(out, image, position))
    # Kept in the float model's own precision (float32 halves what a fit holds: one array per
    # layer, 8,192 rows x its channels, about 0.5 GiB for MobileNetV2's 52 layers).
    return {name: torch.cat(rows).numpy() for name, rows in parts.items()}


@torch.no_grad()
def record_in_pass(qmodel: QuantizedModel, layers: list[str], images: torch.Tensor,
                   rows_per_layer: int, seed: int,
                   visit: Callable[[str, Callable[[], tuple[np.ndarray, np.ndarray]]], None],
                   stop: str) -> None:
    """One forward pass of the quantized model over `images` as a single batch that calls
    `visit(name, rows)` just before each layer in `layers` computes, and ends after the visit
    of `stop`. `rows()` gives the layer's (inputs, image) rows as `record_layers` would; the
    visitor may change the layer's integers, and the layer then computes with the new ones.

    This is how a candidate repairs its layers in forward order at the cost of one pass: each
    layer's rows see the repairs of the layers before it (one batch, because a layer's LPs
    need every image's rows before any image may go on)."""
    seen: set[str] = set()

    def before(name: str, x: torch.Tensor) -> None:
        if name in seen:  # a module called twice in one pass: its first call decides
            return
        seen.add(name)
        layer = qmodel.layer(name)
        sampler = RowSampler(layer, rows_per_layer, len(images), seed)
        visit(name, lambda: quantized_rows(layer, x, sampler))

    with contextlib.ExitStack() as stack:
        stack.enter_context(on_forward({name: qmodel.layer(name) for name in layers}, before,
                                       "input"))
        stack.enter_context(stop_after(qmodel.layer(stop), "input"))
        run_until_stop(qmodel.model, images)


def quantized_rows(layer, x: torch.Tensor, sampler: RowSampler
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`input_rows` of the layer's quantized input. Quantizing an input is elementwise and
    keeps zero (the padding), so the gathered patches are quantized instead of the whole
    map: one copy of a 64-image batch of ImageNet feature maps less at the pass's peak."""
    inputs, image = input_rows(layer, x, sampler)
    return layer.quantize_input(inputs).numpy(), image.numpy()


def input_rows(layer, x_deq: torch.Tensor, sampler: RowSampler
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, image) of the rows `sampler` draws from a batch of dequantized inputs."""
    if layer.weight_int.dim() != 4:
        image, _ = sampler.draw(len(x_deq), (1, 1))
        return x_deq.reshape(len(x_deq), -1), image
    out_h, out_w = conv_output_size(layer, *x_deq.shape[2:])
    image, position = sampler.draw(len(x_deq), (out_h, out_w))
    return patches_at(layer, x_deq, image, position // out_w, position % out_w), image


def output_rows(out: torch.Tensor, image: torch.Tensor,
                position: torch.Tensor | None) -> torch.Tensor:
    """(rows, out channels) of a layer's output at the drawn rows."""
    if position is None:
        return out.reshape(len(out), -1)[image]
    return out.flatten(2)[image, :, position]


def conv_output_size(layer, height: int, width: int) -> tuple[int, int]:
    kh, kw = layer.weight_int.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = (_pair(layer.stride), _pair(layer.padding),
                                    _pair(layer.dilation))
    return ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def patches_at(layer: QuantConv2d, x: torch.Tensor, image: torch.Tensor, out_row: torch.Tensor,
               out_col: torch.Tensor) -> torch.Tensor:
    """The input patches of a few output positions, (positions, C * kh * kw) in F.unfold's
    column order. Gathering only these is far cheaper than unfolding whole feature maps."""
    kh, kw = layer.weight_int.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = (_pair(layer.stride), _pair(layer.padding),
                                    _pair(layer.dilation))
    padded = F.pad(x, (pw, pw, ph, ph))
    taps = [padded[image, :, out_row * sh + i * dh, out_col * sw + j * dw]
            for i in range(kh) for j in range(kw)]  # each (n, k, C)
    return torch.stack(taps, dim=-1).reshape(image.numel(), -1)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _batches(model, modules: dict, what: str, order: list[str], images: torch.Tensor,
             batch_size: int | None):
    """(first image, {name: input or output of modules[name]}) for each batch of `images`
    run through `model`, each pass stopped after the deepest of `modules` (in `order`)."""
    batch_size = batch_size or batch_size_for(images, 250)
    deepest = modules[max(modules, key=order.index)]
    with capture(modules, what) as store, stop_after(deepest):
        for start in range(0, len(images), batch_size):
            run_until_stop(model, images[start:start + batch_size])
            yield start, store


def layer_record(layer, inputs: np.ndarray, image: np.ndarray,
                 float_out: np.ndarray) -> LayerRecord:
    return LayerRecord(inputs.astype(np.float64), float_out, image, layer.weight_int[0].numel(),
                       getattr(layer, "groups", 1), layer.out_features)
