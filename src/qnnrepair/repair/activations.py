"""What the LPs are built from: a layer's quantized input and the float pre-activation target.

For a neuron, the quantized pre-activation is linear in its own integer weights once the layer's
(dequantized) input is fixed, so recording that input on the repair set is all the LP needs. Conv
layers contribute a few sampled output positions per image (one row each): rows stay bounded
whatever the image size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qnnrepair.evaluation import batch_size_for
from qnnrepair.hooks import capture, run_until_stop, stop_after
from qnnrepair.quantization import QuantConv2d, QuantizedModel


@dataclass
class LayerRecord:
    """Rows of one layer on the repair set.

    `inputs` (rows, fan_in): the dequantized input patch each row's neuron sees (for grouped
    convs, all groups side by side: `columns(c)` picks neuron c's); `float_out` and `quant_out`
    (rows, out): pre-activations of the float and the quantized layer; `image` (rows,): which
    repair image each row came from.
    """

    inputs: np.ndarray
    float_out: np.ndarray
    quant_out: np.ndarray
    image: np.ndarray
    fan_in: int
    groups: int
    out_channels: int

    def columns(self, channel: int) -> slice:
        group = channel // (self.out_channels // self.groups)
        return slice(group * self.fan_in, (group + 1) * self.fan_in)


@torch.no_grad()
def record_layers(qmodel: QuantizedModel, layers: list[str], images: torch.Tensor,
                  rows_per_layer: int, seed: int, batch_size: int | None = None,
                  float_out: dict[str, np.ndarray] | None = None) -> dict[str, LayerRecord]:
    """Record every layer in `layers` in one pass of each model over `images`, stopping each
    pass after the deepest of them.

    `float_out` may give each layer's float rows from an earlier call with the same images,
    rows and seed (the sampled positions are then the same): a repair changes only the
    quantized model, so the float pass is skipped."""
    known = float_out is not None and all(name in float_out for name in layers)
    batch_size = batch_size or batch_size_for(images, 250)
    positions = max(1, rows_per_layer // max(len(images), 1))
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[tuple]] = {name: [] for name in layers}
    deepest = max(layers, key=qmodel.layers.index)
    with contextlib.ExitStack() as stack:
        store: dict[str, torch.Tensor] = {}
        stack.enter_context(capture({f"in:{name}": qmodel.layer(name) for name in layers},
                                    "input", store, detach=False))
        stack.enter_context(capture({f"q:{name}": qmodel.layer(name) for name in layers},
                                    "output", store, detach=False))
        stack.enter_context(capture({f"f:{name}": qmodel.float_layer(name) for name in layers},
                                    "output", store, detach=False))
        for module in (qmodel.layer(deepest), qmodel.float_layer(deepest)):
            stack.enter_context(stop_after(module))
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            run_until_stop(qmodel.model, batch)
            if not known:
                run_until_stop(qmodel.float_model, batch)
            for name in layers:
                layer = qmodel.layer(name)
                quant = store[f"q:{name}"]
                parts[name].append(_rows(layer, layer.quantize_input(store[f"in:{name}"]),
                                         quant if known else store[f"f:{name}"], quant,
                                         start, positions, generator))
    records = {name: _join(qmodel.layer(name), rows) for name, rows in parts.items()}
    if known:
        for name, record in records.items():
            record.float_out = float_out[name]
    return records


def _rows(layer, x_deq, float_out, quant_out, first_image, positions, generator):
    n = len(x_deq)
    image = torch.arange(first_image, first_image + n)
    if layer.weight_int.dim() != 4:  # a linear layer (ours or a deployed file's)
        return x_deq, float_out, quant_out, image
    out_h, out_w = quant_out.shape[2:]
    pick = torch.randint(out_h * out_w, (n, min(positions, out_h * out_w)), generator=generator)
    rows = torch.arange(n)[:, None].expand_as(pick)
    inputs = patches_at(layer, x_deq, rows, pick // out_w, pick % out_w)
    flat_f, flat_q = float_out.flatten(2), quant_out.flatten(2)
    return (inputs, flat_f.permute(0, 2, 1)[rows, pick].reshape(-1, flat_f.shape[1]),
            flat_q.permute(0, 2, 1)[rows, pick].reshape(-1, flat_q.shape[1]),
            image[:, None].expand_as(pick).reshape(-1))


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


def _join(layer, rows) -> LayerRecord:
    inputs, f_out, q_out, image = (torch.cat(parts).numpy() for parts in zip(*rows))
    groups = getattr(layer, "groups", 1)
    fan_in = layer.weight_int[0].numel()
    return LayerRecord(inputs.astype(np.float64), f_out.astype(np.float64),
                       q_out.astype(np.float64), image, fan_in, groups, layer.out_features)
