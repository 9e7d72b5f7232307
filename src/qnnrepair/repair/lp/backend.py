"""Where LPs are solved: a backend takes a list of problems and returns their results in order.

The engine only calls ``backend.solve(problems)``; the local process pool is the default, and
another backend (a cluster) registers itself with ``@register_backend("name")`` and is chosen
by name in ExecutionConfig. Every solve is single-threaded and deterministic, so results do not
depend on the backend or the number of workers (only ``solve_seconds`` does).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
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

    "fork" by default: workers need no re-import (torch data loaders do the same on Linux), and
    scripts without a __main__ guard keep working; the LP code uses no torch. "spawn" is safe
    with threads in the parent and imports only the numpy + highspy LP modules.
    """

    def __init__(self, n_workers: int = 2, mp_context: str = "fork") -> None:
        if n_workers < 1:
            raise QnnRepairError(f"n_workers must be at least 1, got {n_workers}")
        self.n_workers, self.mp_context = n_workers, mp_context

    def solve(self, problems: Sequence[LPProblem]) -> list[LPResult]:
        problems = list(problems)
        if self.n_workers <= 1 or len(problems) <= 1:
            return [p.solve() for p in problems]
        context = multiprocessing.get_context(self.mp_context)
        with ProcessPoolExecutor(max_workers=min(self.n_workers, len(problems)),
                                 mp_context=context) as pool:
            return list(pool.map(solve_one, problems))

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
    return LocalPool(n_workers, mp_context).solve(problems)
