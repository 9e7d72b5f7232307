"""Where LPs are solved: a backend takes a list of problems and returns their results in order.

The engine calls ``backend.solve(problems)``, and ``backend.close()`` (where the backend has one)
at the end of a fit on a backend it made itself; the local process pool is the default, and
another backend (a cluster) registers itself with ``@register_backend("name")`` and is chosen
by name in ExecutionConfig. Every solve is single-threaded and deterministic, so results do not
depend on the backend or the number of workers (only ``solve_seconds`` does).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from qnnrepair.errors import QnnRepairError
from qnnrepair.registry import Registry
from qnnrepair.repair.lp.formulation import LPProblem
from qnnrepair.repair.lp.result import LPResult


class LPBackend(Protocol):
    def solve(self, problems: Sequence[LPProblem]) -> list[LPResult]: ...


def solve_one(problem: LPProblem) -> LPResult:
    return problem.solve()


class LocalPool:
    """Solves LPs in a process pool on this machine (in this process when n_workers is 1).

    The pool starts at the first call that has LPs for two workers and serves every later call
    until `close()` (or the end of a `with` block): forking a process that holds a model and its
    activations costs about 0.1 s of CPU, and a fit calls `solve` once per layer and candidate
    (about 100 times on ResNet-20), so a pool per call spent a fifth of a repair's CPU starting
    workers. "fork" by default: workers need no re-import (torch data loaders do the same on
    Linux), and scripts without a __main__ guard keep working; the LP code uses no torch.
    "spawn" is safe with threads in the parent and imports only the numpy + highspy LP modules.
    """

    def __init__(self, n_workers: int = 2, mp_context: str = "fork") -> None:
        if n_workers < 1:
            raise QnnRepairError(f"n_workers must be at least 1, got {n_workers}")
        self.n_workers, self.mp_context = n_workers, mp_context
        self._pool: ProcessPoolExecutor | None = None

    def solve(self, problems: Sequence[LPProblem]) -> list[LPResult]:
        problems = list(problems)
        if self.n_workers <= 1 or len(problems) <= 1:
            return [p.solve() for p in problems]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.n_workers, mp_context=multiprocessing.get_context(self.mp_context))
        try:
            return list(self._pool.map(solve_one, problems))
        except BrokenProcessPool:  # a worker died (killed, out of memory): start anew next time
            self.close()
            raise

    def close(self) -> None:
        """Stop the workers; a later `solve` starts new ones."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalPool(n_workers={self.n_workers}, mp_context={self.mp_context!r})"


BackendFactory = Callable[..., LPBackend]
BACKENDS = Registry("LP backend")
BACKENDS.register("local")(LocalPool)


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    return BACKENDS.register(name)


def make_backend(name: str, **options) -> LPBackend:
    """The backend `name`, built with `options` (n_workers, and whatever it takes)."""
    return BACKENDS.lookup(name)(**options)


def solve_many(problems: Sequence[LPProblem], n_workers: int = 1, *,
               mp_context: str = "spawn") -> list[LPResult]:
    """Solve independent LPs on the local pool; results in input order."""
    with LocalPool(n_workers, mp_context) as pool:
        return pool.solve(problems)
