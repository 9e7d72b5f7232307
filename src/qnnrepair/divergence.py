"""KL(softmax F || softmax Q) per image: how far a quantized model's soft predictions are from
the float model's. The blame, the guard and the per-layer table all measure with this one."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over classes in float64 (small divergences cancel in float32)."""
    return F.log_softmax(logits.double(), dim=1)


def kl_from_log_probs(float_log_probs: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_c p_c (log p_c - log q_c) per image, from log-probabilities."""
    return (float_log_probs.exp() * (float_log_probs - log_q)).sum(dim=1)


def kl_divergence(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax F || softmax Q) per image, in float64."""
    return kl_from_log_probs(log_probs(float_logits), log_probs(quant_logits))
