"""Which inputs pass, fail or are skipped: the one rule localization and repair share.

With oracle o(x) (the label, or the float model's prediction F(x)), float model F and
quantized model Q, an input x is

- passing if Q(x) == o(x);
- failing if Q(x) != o(x) while F(x) == o(x): a failure quantization caused, a repair target;
- skipped otherwise (F is wrong too, so quantization is not to blame).

With oracle "float", o(x) = F(x), so F is always right and no input is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qnnrepair.errors import QnnRepairError

if TYPE_CHECKING:
    import torch

ORACLES = ("label", "float")


@dataclass(frozen=True)
class Outcomes:
    """Per input, as torch tensors of shape (n_inputs,) on the predictions' device.

    `target` (int64): the class each input should get. `usable` (bool): F(x) == target, the
    float model is right. `passing`, `failing`, `skipped` (bool): disjoint, and every input is
    exactly one of them; failing = usable & ~passing.
    """

    target: torch.Tensor
    usable: torch.Tensor
    passing: torch.Tensor
    failing: torch.Tensor
    skipped: torch.Tensor

    @property
    def n_passed(self) -> int:
        return int(self.passing.sum())

    @property
    def n_failed(self) -> int:
        return int(self.failing.sum())

    @property
    def n_skipped(self) -> int:
        return int(self.skipped.sum())

    def __repr__(self) -> str:
        return (
            f"Outcomes(n_inputs={len(self.target)}, n_passed={self.n_passed}, "
            f"n_failed={self.n_failed}, n_skipped={self.n_skipped})"
        )


def outcomes(
    float_pred: torch.Tensor,
    quant_pred: torch.Tensor,
    labels: torch.Tensor,
    oracle: str = "label",
) -> Outcomes:
    """Classify every input from the float and quantized predictions and the labels.

    Arguments are 1-D integer class indices, one per input: torch tensors (numpy arrays and
    sequences are converted with `torch.as_tensor`; the result is then on the CPU).
    """
    import torch  # here, so that the CLI reads ORACLES without loading torch

    if oracle not in ORACLES:
        raise QnnRepairError(f"unknown oracle {oracle!r}; use one of {', '.join(ORACLES)}")
    float_pred, quant_pred, labels = (
        torch.as_tensor(t) for t in (float_pred, quant_pred, labels)
    )
    shapes = {tuple(t.shape) for t in (float_pred, quant_pred, labels)}
    if len(shapes) != 1 or float_pred.dim() != 1:
        raise QnnRepairError(
            f"float predictions {tuple(float_pred.shape)}, quantized predictions "
            f"{tuple(quant_pred.shape)} and labels {tuple(labels.shape)} must be 1-D and of "
            "the same length, one class per input"
        )
    target = labels if oracle == "label" else float_pred
    usable = float_pred == target
    passing = quant_pred == target
    failing = usable & ~passing
    return Outcomes(
        target=target.to(torch.int64),
        usable=usable,
        passing=passing,
        failing=failing,
        skipped=~(passing | failing),
    )
