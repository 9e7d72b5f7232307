"""QDrop (Wei, Gong, Yu, Liu, Yu; ICLR 2022, "QDrop: Randomly dropping quantization for
extremely low-bit post-training quantization"), written from the paper, built on this package's
AdaRound pieces.

QDrop is BRECQ-style block reconstruction with activation quantization randomly dropped:

- Blocks, in forward order. A block is a module whose quantized layers are reconstructed
  together: a residual BasicBlock of the CIFAR ResNets, an InvertedResidual of the MobileNetV2
  (`blocks="auto"`), or the modules named in `blocks`. Every layer outside a block (ResNet: the
  first conv, the final linear) is a block of its own; `blocks="layers"` makes every layer its
  own block (also the fallback for a model without recognizable blocks).
- Each layer of a block gets AdaRound's rounding variable V (`SoftRounding`: W~ = s * (floor(w/s)
  + h(V))), and all V of the block are learned jointly, with Adam (lr 1e-3), to minimize

      E ||block_F(x_F) - block_Q~(x_Q)||^2  +  lambda * sum_layers sum(1 - |2 h(V) - 1|^beta)

  x_Q is the block's input in the quantized model (earlier blocks already rounded), x_F the float
  (BN-folded) model's; the target is the float block's output (ResNet block: after the residual
  sum and its ReLU; a lone layer: its pre-activation, as in this package's AdaRound).
  ||.||^2 sums over channels and averages over images and positions; lambda 0.01, beta annealed
  20 -> 2 after a 20 % warm start, batches of 32 calibration images, `iters` per block (1,000 by
  default, the same as AdaRound's per layer; the paper uses 20,000).
- The drop (the paper's contribution): during reconstruction each quantized activation inside the
  block, that is the input quantization of every Conv/Linear of the block (where this package
  quantizes activations, section 2 of the design), is replaced element by element by its
  unquantized value with probability `drop_prob` (p = 0.5, the paper's default), a fresh mask
  each step, drawn from a seeded generator. The unquantized value is the one on the quantized
  path (the tensor the layer would have quantized). The authors' code places activation
  quantizers at block outputs, so for a block's entry it mixes the quantized model's input with
  the float model's; here the entry is the block's own first input quantization, and the same
  rule applies to every activation of the block. Activation quantization is
  straight-through (gradient 1 inside the clipping range, 0 outside), so that the rounding of a
  block's first conv gets a gradient through the second conv's quantized input.
  Evaluation and the result are not dropped: the returned model quantizes every activation.

`drop_prob=0` is BRECQ (block reconstruction with activations quantized); `drop_prob=0` with
`blocks="layers"` is exactly this package's AdaRound (same integers for the same seed: the batch
draws come from the same generators and the drop from a separate one).

Finally weight_int = floor(w/s) + (h(V) >= 0.5) for every layer, as AdaRound: integers on the
grid, floor or ceil of clamp(w/s); scales, biases and activation ranges stay as calibrated.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qnnrepair.baselines.adaround import SoftRounding, annealed_beta
from qnnrepair.baselines.capture import check_calibration, collect_layer
from qnnrepair.baselines.reconstruction import layer_output, reconstruction_error
from qnnrepair.baselines.registry import register_baseline
from qnnrepair.errors import QnnRepairError
from qnnrepair.progress import progress
from qnnrepair.quantization import QuantizedModel
from qnnrepair.quantization.fold import set_module

logger = logging.getLogger(__name__)

# Offset of the drop-mask generator's seed from the batch generator's, so that the batch draws
# are AdaRound's (same seed, same block index) whatever the drop does.
_DROP_STREAM = 7_919


def block_types() -> tuple[type[nn.Module], ...]:
    """The module types `blocks="auto"` reconstructs as one block (the zoo's residual units)."""
    from qnnrepair.models.mobilenet import InvertedResidual
    from qnnrepair.models.resnet import BasicBlock

    return (BasicBlock, InvertedResidual)


@dataclass(frozen=True)
class Block:
    """A module reconstructed as a whole: `name` is the module called, `layers` the quantized
    layers inside it, in forward order (a lone layer is a block whose name is the layer's)."""

    name: str
    layers: tuple[str, ...]

    def __repr__(self) -> str:
        return f"Block({self.name!r}, {len(self.layers)} layers)"


def find_blocks(qmodel: QuantizedModel, blocks: str | Sequence[str] = "auto") -> list[Block]:
    """The blocks of `qmodel` in forward order: "auto" (the zoo's residual units), "layers"
    (every layer alone) or the fully qualified names of the modules to treat as blocks. Layers
    in no block are blocks of their own; a block's layers must run one after the other."""
    if isinstance(blocks, str) and blocks not in ("auto", "layers"):
        raise QnnRepairError(f"blocks must be 'auto', 'layers' or a list of module names, "
                             f"got {blocks!r}")
    if blocks == "layers":
        names: list[str] = []
    elif blocks == "auto":
        kinds = block_types()
        names = [n for n, m in qmodel.model.named_modules() if n and isinstance(m, kinds)]
    else:
        names = list(blocks)
        known = dict(qmodel.model.named_modules())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise QnnRepairError(f"blocks {unknown} are not modules of the model; give fully "
                                 "qualified module names such as 'layer1.0'")
    owner: dict[str, str] = {}
    for name in names:  # outermost first: named_modules lists a parent before its children
        for layer in qmodel.layers:
            if layer.startswith(name + ".") and layer not in owner:
                owner[layer] = name
    result: list[Block] = []
    for layer in qmodel.layers:
        name = owner.get(layer, layer)
        if result and result[-1].name == name:
            result[-1] = Block(name, (*result[-1].layers, layer))
        elif any(b.name == name for b in result):
            raise QnnRepairError(f"block {name!r} does not run its layers one after the other "
                                 f"(interrupted before {layer!r}); leave it out of `blocks`")
        else:
            result.append(Block(name, (layer,)))
    return result


def quantize_input_ste(layer, x: torch.Tensor) -> torch.Tensor:
    """`layer.quantize_input(x)` in value; gradient 1 where x is inside the clipping range, 0
    outside (straight-through, as the paper's activation quantizers)."""
    q = layer.quantize_input(x.detach())
    if not x.requires_grad:
        return q
    levels = 2**layer.act_bits - 1
    lo = -layer.input_zero_point.float() * layer.input_scale
    hi = (levels - layer.input_zero_point.float()) * layer.input_scale
    inside = ((x >= lo) & (x <= hi)).float()
    return q + (x - x.detach()) * inside  # adds exactly 0: the value stays q


def drop_quantization(x: torch.Tensor, quantized: torch.Tensor, drop_prob: float,
                      generator: torch.Generator) -> torch.Tensor:
    """`quantized` with each element replaced by `x`'s (its unquantized value) with probability
    `drop_prob`, independently (a fresh mask from `generator`; none drawn when p = 0)."""
    if drop_prob <= 0:
        return quantized
    keep_float = torch.rand(x.shape, generator=generator) < drop_prob
    return torch.where(keep_float, x, quantized)


class _ReconstructedLayer(nn.Module):
    """A quantized layer during reconstruction: soft weights from its `SoftRounding`, input
    quantization dropped element-wise with probability `drop_prob`."""

    def __init__(self, layer: nn.Module, rounding: SoftRounding, drop_prob: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.layer = layer
        self.rounding = rounding
        self.drop_prob = drop_prob
        self.generator = generator
        self.bias = layer.dequantized_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized = drop_quantization(x, quantize_input_ste(self.layer, x), self.drop_prob,
                                      self.generator)
        return layer_output(self.layer, quantized, self.rounding.soft_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


@contextlib.contextmanager
def _swapped(model: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """Put `replacements` (by fully qualified name) into `model`; the originals come back in
    `finally`, also when the body raises."""
    originals = {name: model.get_submodule(name) for name in replacements}
    try:
        for name, module in replacements.items():
            set_module(model, name, module)
        yield
    finally:
        for name, module in originals.items():
            set_module(model, name, module)


@register_baseline("qdrop")
def qdrop(qmodel: QuantizedModel, calibration_images: torch.Tensor, *, seed: int = 0,
          show_progress: bool = False, iters: int = 1000, drop_prob: float = 0.5,
          blocks: str | Sequence[str] = "auto", batch_size: int = 32, reg_weight: float = 0.01,
          lr: float = 1e-3, beta_start: float = 20.0, beta_end: float = 2.0,
          warm_start: float = 0.2, capture_batch_size: int = 250) -> QuantizedModel:
    """A copy of `qmodel` whose weight rounding is learned block by block by QDrop."""
    images = check_calibration(calibration_images, "qdrop")
    if not 0.0 <= drop_prob <= 1.0:
        raise QnnRepairError(f"drop_prob must be in [0, 1], got {drop_prob}")
    out = qmodel.copy()
    found = find_blocks(out, blocks)
    logger.info("qdrop: %d blocks (%s)", len(found), ", ".join(b.name for b in found))
    for index, block in progress(list(enumerate(found)), show_progress, desc="qdrop"):
        started = time.process_time()
        inputs = collect_layer(out.model, out.model.get_submodule(block.name), images,
                               capture_batch_size, output=False)
        targets = collect_layer(qmodel.float_model, qmodel.float_model.get_submodule(block.name),
                                images, capture_batch_size, output=True)
        losses = reconstruct_block(
            out, block, inputs, targets, seed=seed * 1_000_003 + index, iters=iters,
            drop_prob=drop_prob, batch_size=batch_size, reg_weight=reg_weight, lr=lr,
            beta_start=beta_start, beta_end=beta_end, warm_start=warm_start)
        logger.info("qdrop %s: reconstruction %.4g (before %.4g), %.1f CPU s", block.name,
                    losses["qdrop"], losses["before"], time.process_time() - started)
    return out


def block_error(model: nn.Module, block: Block, inputs: torch.Tensor,
                targets: torch.Tensor) -> float:
    """Reconstruction error of the block as `model` quantizes it (every activation quantized)."""
    with torch.no_grad():
        return float(reconstruction_error(model.get_submodule(block.name)(inputs), targets))


def reconstruct_block(qmodel: QuantizedModel, block: Block, inputs: torch.Tensor,
                      targets: torch.Tensor, *, seed: int, iters: int, drop_prob: float,
                      batch_size: int, reg_weight: float, lr: float, beta_start: float,
                      beta_end: float, warm_start: float) -> dict[str, float]:
    """Learn the rounding of `block`'s layers in `qmodel` (changed in place: weight_int only)
    and return its reconstruction error before and after, on up to 256 of the images."""
    model = qmodel.model
    check = slice(0, min(len(inputs), 256))
    before = block_error(model, block, inputs[check], targets[check])
    batch_generator = torch.Generator().manual_seed(seed)
    drop_generator = torch.Generator().manual_seed(seed + _DROP_STREAM)
    roundings = {name: SoftRounding(qmodel.layer(name), qmodel.float_layer(name).weight.detach())
                 for name in block.layers}
    wrappers = {name: _ReconstructedLayer(qmodel.layer(name), roundings[name], drop_prob,
                                          drop_generator) for name in block.layers}
    optimizer = torch.optim.Adam([r.v for r in roundings.values()], lr=lr)
    n_warm = int(warm_start * iters)
    n = len(inputs)
    with _swapped(model, wrappers):
        module = model.get_submodule(block.name)
        for step in range(iters):
            pick = torch.randperm(n, generator=batch_generator)[:batch_size]
            loss = reconstruction_error(module(inputs[pick]), targets[pick])
            beta = annealed_beta(step, iters, n_warm, beta_start, beta_end)
            if beta is not None:
                loss = loss + reg_weight * sum(r.regularizer(beta) for r in roundings.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for name, rounding in roundings.items():
        qmodel.layer(name).weight_int.copy_(rounding.integers().to(torch.int8))
    return {"before": before, "qdrop": block_error(model, block, inputs[check], targets[check])}
