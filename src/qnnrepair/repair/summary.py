"""Many samples, few LP rows: the hidden-neuron objective summarized by its covariance.

Matching the float pre-activation over N samples (positions of many images) in the least-squares
sense is, for a neuron with centred inputs X (N x J) and residual r,

    ||X u - r||^2 / N = u' H u - 2 u' g + const,   H = X'X / N,  g = X' r / N,  u = s * d.

With H = V diag(lam) V', that equals ||A u - z||^2 + const for A = diag(sqrt(lam)) V' and
z = diag(1/sqrt(lam)) V' g. Keeping the K largest eigen-directions gives K rows that carry all N
samples; the LP then minimizes the L1 norm of A u - z over those rows, so one LP of K rows
draws on every sample. K is `LPConfig.hidden_rows` (64; benchmarks/results/defaults-rows.md
compares 64, 128 and 256 on V).

The bias is not an LP variable here: centring removes it, and its L2-optimal delta given the
integer deltas d is e = mean(r) - s * d . mean(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class RowSummary:
    """Top-K eigen-directions of the centred inputs of one group of a layer."""

    mean: np.ndarray  # (J,) mean input
    directions: np.ndarray  # (J, K) eigenvectors V
    sqrt_eig: np.ndarray  # (K,) sqrt of the eigenvalues
    centred: np.ndarray  # (N, J) X - mean

    @classmethod
    def of(cls, inputs: np.ndarray, k: int, seed: int = 0) -> RowSummary:
        mean = inputs.mean(axis=0)
        centred = inputs - mean
        eig, vec = _top_eigen(centred, k, seed)
        top = np.argsort(eig)[::-1][:k]
        # Directions with (numerically) no variance carry no information: dropping them keeps
        # z = V'g / sqrt(lam) finite.
        top = top[eig[top] > 1e-12 * max(eig.max(), 1e-30)]
        return cls(mean, vec[:, top], np.sqrt(eig[top]), centred)

    @cached_property
    def rows(self) -> np.ndarray:
        """A = diag(sqrt(lam)) V', the LP's rows (K x J); one array shared by the LPs of every
        neuron of the group, so a backend can send it once."""
        return self.sqrt_eig[:, None] * self.directions.T

    def rhs(self, residual: np.ndarray) -> np.ndarray:
        """z for a residual r (N,): what A u should equal; for residuals (N, m) of m neurons
        sharing these inputs, their z side by side (K, m), in two matrix products."""
        g = self.centred.T @ (residual - residual.mean(axis=0)) / len(residual)
        z = self.directions.T @ g
        return z / self.sqrt_eig.reshape((-1,) + (1,) * (z.ndim - 1))


# Above this fan-in the J x J covariance and its full eigendecomposition cost minutes (Conv3's
# dense layer has 12,544 inputs); a randomized low-rank SVD gives the top-K directions instead.
FULL_EIGEN_MAX_FAN_IN = 4096


def _top_eigen(centred: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors (columns) of centred'centred / N: all of them, or about the
    top k for a large fan-in (randomized SVD, seeded so the same inputs give the same rows)."""
    n, fan_in = centred.shape
    if fan_in <= FULL_EIGEN_MAX_FAN_IN:
        return np.linalg.eigh(centred.T @ centred / n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, sing, v = torch.svd_lowrank(torch.from_numpy(centred), q=min(k + 10, n, fan_in),
                                       niter=4)
    return sing.numpy() ** 2 / n, v.numpy()
