"""Which layer causes the drop? Per layer, in accuracy points and KL, on validation images.

For each quantized layer L of a model (our own quantizer's, a .tflite or an ONNX QDQ file's):

- `blame_share`: the share of the positive output blame (the gradient blame, summed over L's
  neurons) that L holds;
- `float_accuracy` / `float_kl`: the quantized model with L alone computing in float (its float
  twin's weights on L's unrounded input; every other layer quantized);
- `quantized_accuracy` / `quantized_kl`: the float model with L alone quantized.

KL is the mean KL(float || model) over the images. `recovers` = float_accuracy minus the
quantized model's accuracy: the points that leaving L in float gives back, the answer NNCF's
accuracy control and AIMET's per-layer analysis give by the same experiment. One pass over
the images per layer and variant; a layer is swapped by a forward hook that replaces its output,
so the same code serves every model kind.

What "alone in float" removes is the layer's own rounding: its weights' (against the float
twin's) and its input's. In a `.tflite` file's simulation the float twin holds the file's own
dequantized weights and the input arrives on the layer's grid, so there the swap changes
nothing; the file's loss is in the activation roundings between layers, and the "alone
quantized" column (the float reference with that layer's rounding) tells its layers apart.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from qnnrepair.divergence import kl_divergence
from qnnrepair.evaluation import batch_size_for, logits_of
from qnnrepair.hooks import rewrite_output
from qnnrepair.progress import progress

logger = logging.getLogger(__name__)


@dataclass
class LayerCost:
    layer: str
    blame_share: float | None
    float_accuracy: float
    float_kl: float
    quantized_accuracy: float
    quantized_kl: float
    recovers: float  # float_accuracy minus the whole quantized model's accuracy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerCosts:
    """The table: the whole models' accuracy and KL, and one LayerCost per layer, sorted by the
    points that leaving the layer in float recovers (most first)."""

    n_images: int
    float_accuracy: float
    quantized_accuracy: float
    quantized_kl: float
    layers: list[LayerCost]

    def to_dict(self) -> dict:
        return {"n_images": self.n_images, "float_accuracy": self.float_accuracy,
                "quantized_accuracy": self.quantized_accuracy, "quantized_kl": self.quantized_kl,
                "layers": [row.to_dict() for row in self.layers]}

    @classmethod
    def from_dict(cls, data: dict) -> LayerCosts:
        return cls(data["n_images"], data["float_accuracy"], data["quantized_accuracy"],
                   data["quantized_kl"], [LayerCost(**row) for row in data["layers"]])

    def to_text(self, top: int | None = None) -> str:
        lines = [f"per layer, on {self.n_images} validation images (float "
                 f"{self.float_accuracy:.2f} %, quantized {self.quantized_accuracy:.2f} %, "
                 f"KL {self.quantized_kl:.4f}):",
                 f"  {'layer':<36} {'blame':>6} {'alone float':>12} {'KL':>8} "
                 f"{'alone quant.':>12} {'KL':>8}"]
        for row in self.layers[:top]:  # most recovered first
            share = "-" if row.blame_share is None else f"{100 * row.blame_share:5.1f}%"
            lines.append(f"  {row.layer:<36} {share:>6} {row.float_accuracy:>7.2f} % "
                         f"({row.recovers:+.2f}) {row.float_kl:>8.4f} "
                         f"{row.quantized_accuracy:>10.2f} % {row.quantized_kl:>8.4f}")
        return "\n".join(lines)


def layer_costs(qmodel, images: torch.Tensor, labels: torch.Tensor,
                scores: dict[str, np.ndarray] | None = None,
                show_progress: bool = False) -> LayerCosts:
    """The per-layer table of `qmodel` (a QuantizedModel or a deployed file's model) on
    `images`; `scores` (a fitted blame localizer's `scores_`) gives the blame shares."""
    batch_size = batch_size_for(images, 250)
    float_logits = logits_of(qmodel.float_model, images, batch_size)
    float_acc = _accuracy(float_logits, labels)
    quant_logits = logits_of(qmodel.model, images, batch_size)
    quant_acc = _accuracy(quant_logits, labels)
    shares = _shares(scores, qmodel.layers)
    rows = []
    for name in progress(qmodel.layers, show_progress, desc="per-layer cost"):
        qlayer, flayer = qmodel.layer(name), qmodel.float_layer(name)
        alone_float = _swapped(qmodel.model, name, qlayer, flayer, images, batch_size)
        alone_quant = _swapped(qmodel.float_model, name, flayer, qlayer, images, batch_size)
        acc = _accuracy(alone_float, labels)
        rows.append(LayerCost(name, shares.get(name), acc, _kl(float_logits, alone_float),
                              _accuracy(alone_quant, labels), _kl(float_logits, alone_quant),
                              acc - quant_acc))
    rows.sort(key=lambda r: (-r.recovers, r.float_kl))
    return LayerCosts(len(images), float_acc, quant_acc, _kl(float_logits, quant_logits), rows)


def _swapped(model: nn.Module, name: str, module: nn.Module, replacement: nn.Module,
             images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits with `module`'s output computed by `replacement` on its input."""

    def swap(_name, _module, inputs, output):
        return replacement(inputs[0]).to(output.dtype)

    with rewrite_output({name: module}, swap):
        return logits_of(model, images, batch_size)


def _shares(scores, layers) -> dict[str, float]:
    if not scores:
        return {}
    positive = {n: float(np.clip(scores[n], 0, None).sum()) for n in layers if n in scores}
    total = sum(positive.values())
    return {n: v / total for n, v in positive.items()} if total > 0 else {}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).double().mean())


def _kl(float_logits: torch.Tensor, logits: torch.Tensor) -> float:
    return float(kl_divergence(float_logits, logits).mean())
