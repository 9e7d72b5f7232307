"""The contract every localizer keeps, whatever its signal (spectrum metrics, output blame)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Localizer(Protocol):
    """Ranks the neurons of a quantized model by how much they are to blame:

        localizer = make_localizer("gradient").fit(float_model, quant_model, layers, batches)
        localizer.ranking_[:10]     # Neuron(layer, index), most to blame first

    `layers` are fully qualified names of Conv / Linear layers present in both models (the
    same names: the float twin of each quantized layer); `batches` yields (images, labels) as
    normalized float tensors and int64 labels. `fit` leaves both models as they were (eval
    mode restored, hooks removed) and returns the localizer, which has learned `scores_`
    ({layer: float64 array, one score per output neuron or channel}) and `ranking_` (every
    neuron, highest score first, ties by layer order then index). The same inputs and seed
    give the same ranking.
    """

    # Learned by fit (not declared as protocol members, so that an unfitted localizer passes
    # isinstance): scores_: dict[str, np.ndarray]; ranking_: list[Neuron].

    def fit(self, float_model: nn.Module, quant_model: nn.Module, layers: Sequence[str],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            show_progress: bool = False) -> Localizer: ...
