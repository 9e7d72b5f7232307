"""The guard: which candidates the repair keeps, judged on the validation set.

Criterion "kl" (the default): a candidate is kept when it brings the quantized model's soft
predictions closer to the float model's (mean KL(float || candidate) on V lower than the best
so far by at least `min_gain`, relative) and its validation accuracy is not below the best
so far. Accuracy alone is a coarse judge: on 1,000 images a tie or one image more is noise
(benchmarks/results/experiments/guard_rules.md replays the rules on recorded candidates).
With `min_z` > 0 the KL must also have dropped by at least `min_z` standard errors of the mean
of the per-image drops: a paired test, so that a lower mean carried by a few images of V does
not count.
Criterion "accuracy" (the paper preset): kept when it changes something and validation
accuracy does not drop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from qnnrepair.divergence import kl_from_log_probs, log_probs
from qnnrepair.evaluation import batch_size_for, logits_of
from qnnrepair.formats.deployed import runtime_scorer
from qnnrepair.formats.prefix import PrefixCache, supports_prefix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """A model on the validation set: accuracy in percent, mean KL(float || model) in nats
    (`per_image`: the KL of each image)."""

    accuracy: float
    divergence: float
    per_image: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.accuracy:.2f}% KL {self.divergence:.5f}"


class Guard:
    """Scores models on the validation images against the labels and the float model."""

    def __init__(self, float_model, images: torch.Tensor, labels: torch.Tensor,
                 criterion: str = "kl", min_gain: float = 0.0, min_z: float = 0.0) -> None:
        self.images, self.labels = images, labels
        self.criterion, self.min_gain, self.min_z = criterion, min_gain, min_z
        self.float_log_probs = log_probs(logits_of(float_model, images))
        self.float_accuracy = 100.0 * (self.float_log_probs.argmax(dim=1) == labels).double() \
            .mean().item()
        self.prefix: PrefixCache | None = None
        self.runtime = None  # runtime_logits(model, images), where models run in their runtime

    def run_like(self, base) -> None:
        """How models that are `base` with some integers changed are run: an ONNX QDQ graph in
        ONNX Runtime, which the simulation does not predict to the bit (formats/deployed.py
        runtime_scorer); another deployed graph from the values `base` has before the first
        change (formats/prefix.py); anything else whole."""
        self.runtime = runtime_scorer(base)
        if self.runtime is not None:
            logger.info("validation: candidates run in the file's runtime")
        elif supports_prefix(base):
            self.prefix = PrefixCache(base, self.images, batch_size_for(self.images))

    def score(self, model) -> Score:
        if self.runtime is not None:
            logits = self.runtime(model, self.images).double()
        elif self.prefix is not None and type(model) is type(self.prefix.base):
            logits = self.prefix.logits(model).double()
        else:
            logits = logits_of(model, self.images).double()
        accuracy = 100.0 * (logits.argmax(dim=1) == self.labels).double().mean().item()
        per_image = kl_from_log_probs(self.float_log_probs, log_probs(logits))
        return Score(accuracy, per_image.mean().item(), per_image)

    def accepts(self, candidate: Score, best: Score, changed: bool) -> bool:
        return keeps(candidate, best, changed, self.criterion, self.min_gain, self.min_z)


def keeps(candidate: Score, best: Score, changed: bool, criterion: str = "kl",
          min_gain: float = 0.0, min_z: float = 0.0) -> bool:
    """The guard's decision on two scores (Guard.accepts), apart from any model."""
    if not changed or candidate.accuracy < best.accuracy:
        return False
    if criterion == "accuracy":
        return True
    return (candidate.divergence < best.divergence * (1.0 - min_gain)
            and (min_z == 0.0 or significant_drop(best.per_image, candidate.per_image, min_z)))


def significant_drop(best: torch.Tensor, candidate: torch.Tensor, z: float) -> bool:
    """The per-image KL fell from `best` to `candidate` by at least `z` standard errors of the
    mean drop (paired over the same images; normal approximation)."""
    drop = (best - candidate).double()
    return drop.mean().item() >= z * drop.std(correction=0).item() / math.sqrt(len(drop))
