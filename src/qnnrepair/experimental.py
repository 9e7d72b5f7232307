"""Research helpers the benchmarks use to study the repair, apart from the stable API.

- `rank_in_rounds`: a ranking chosen a few neurons at a time, re-ranking after repairing them
  (benchmarks/experiments/e2_metrics.py);
- `weight_gradients`: the gradient of the divergence with respect to each layer's weights and
  bias, which predicts what a repair's change does (benchmarks/experiments/e2_interactions.py).

Neither is used by the repair itself; both may change with the experiments that use them.
"""

from __future__ import annotations

import logging

import torch

from qnnrepair.errors import QnnRepairError
from qnnrepair.localization.blame import weight_gradients
from qnnrepair.neurons import Neuron
from qnnrepair.quantization import QuantizedModel
from qnnrepair.repair.engine import Repairer, fit_localizer

logger = logging.getLogger(__name__)

__all__ = ["rank_in_rounds", "weight_gradients"]


def rank_in_rounds(repairer: Repairer, qmodel: QuantizedModel, n_neurons: int, round_size: int,
                   repair_images: torch.Tensor, repair_labels: torch.Tensor) -> list[Neuron]:
    """A ranking of `n_neurons` chosen `round_size` at a time: each round ranks the neurons
    not chosen yet (config.localization) on `qmodel` with the chosen ones repaired
    (Repairer.repair_neurons) and takes its top. Blame at Q misleads once some neurons are fixed:
    a neuron whose error offset another's raises D when repaired after it (ResNet-20 W3A8:
    10 of the 16 neurons after the top 5 %, benchmarks/results/experiments/
    e2_interactions.md)."""
    if round_size < 1:
        raise QnnRepairError(f"round_size must be at least 1, got {round_size}")
    chosen: list[Neuron] = []
    current = qmodel
    while True:
        taken = set(chosen)
        ranked = fit_localizer(current, repair_images, repair_labels, repairer.config).ranking_
        chosen += [n for n in ranked if n not in taken][:min(round_size,
                                                              n_neurons - len(chosen))]
        logger.info("ranking in rounds: %d of %d neurons chosen", len(chosen), n_neurons)
        if len(chosen) >= min(n_neurons, len(ranked)):
            return chosen
        current, _, _ = repairer.repair_neurons(qmodel, chosen, repair_images, repair_labels)
