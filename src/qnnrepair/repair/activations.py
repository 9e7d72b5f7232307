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


@contextlib.contextmanager
def _capture(module: torch.nn.Module, store: dict, key: str, pre: bool):
    if pre:
        handle = module.register_forward_pre_hook(lambda m, i: store.__setitem__(key, i[0]))
    else:
        handle = module.register_forward_hook(lambda m, i, o: store.__setitem__(key, o))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def record_layers(qmodel: QuantizedModel, layers: list[str], images: torch.Tensor,
                  rows_per_layer: int, seed: int, batch_size: int = 250) -> dict[str, LayerRecord]:
    """Record every layer in `layers` in one pass of each model over `images`."""
    positions = max(1, rows_per_layer // max(len(images), 1))
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[tuple]] = {name: [] for name in layers}
    with contextlib.ExitStack() as stack:
        store: dict[str, torch.Tensor] = {}
        for name in layers:
            stack.enter_context(_capture(qmodel.layer(name), store, f"in:{name}", pre=True))
            stack.enter_context(_capture(qmodel.layer(name), store, f"q:{name}", pre=False))
            stack.enter_context(_capture(qmodel.float_layer(name), store, f"f:{name}", pre=False))
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            qmodel.model(batch)
            qmodel.float_model(batch)
            for name in layers:
                layer = qmodel.layer(name)
                parts[name].append(_rows(layer, layer.quantize_input(store[f"in:{name}"]),
                                         store[f"f:{name}"], store[f"q:{name}"], start,
                                         positions, generator))
    return {name: _join(qmodel.layer(name), rows) for name, rows in parts.items()}


def _rows(layer, x_deq, float_out, quant_out, first_image, positions, generator):
    n = len(x_deq)
    image = torch.arange(first_image, first_image + n)
    if not isinstance(layer, QuantConv2d):
        return x_deq, float_out, quant_out, image
    patches = F.unfold(x_deq, layer.weight_int.shape[2:], layer.dilation, layer.padding,
                       layer.stride)  # (n, groups * fan_in, L)
    n_pos = patches.shape[2]
    pick = torch.randint(n_pos, (n, min(positions, n_pos)), generator=generator)
    rows = torch.arange(n)[:, None].expand_as(pick)
    inputs = patches.permute(0, 2, 1)[rows, pick].reshape(-1, patches.shape[1])
    flat_f, flat_q = float_out.flatten(2), quant_out.flatten(2)
    return (inputs, flat_f.permute(0, 2, 1)[rows, pick].reshape(-1, flat_f.shape[1]),
            flat_q.permute(0, 2, 1)[rows, pick].reshape(-1, flat_q.shape[1]),
            image[:, None].expand_as(pick).reshape(-1))


def _join(layer, rows) -> LayerRecord:
    inputs, f_out, q_out, image = (torch.cat(parts).numpy() for parts in zip(*rows))
    groups = getattr(layer, "groups", 1)
    fan_in = layer.weight_int[0].numel()
    return LayerRecord(inputs.astype(np.float64), f_out.astype(np.float64),
                       q_out.astype(np.float64), image, fan_in, groups, layer.out_features)
