"""LPs of one layer sent to the pool one by one or in chunks (their shared rows pickled once a
chunk), timed in the same invocation, alternating.

    python benchmarks/lp_chunks.py [--neurons 64] [--rows 256] [--fan-in 576] [--repeats 3]

The problems are ResNet-20-sized "match" LPs on one shared random summary matrix (rows x
fan-in), as the default formulation builds for one layer. Prints wall seconds per run. The
local pool sends LPs one by one: chunking was not faster here (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from qnnrepair.repair.lp import NeuronProblem
from qnnrepair.repair.lp.backend import solve_one


def problems(n: int, rows: int, fan_in: int) -> list[NeuronProblem]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(rows, fan_in))
    out = []
    for _ in range(n):
        q = rng.integers(-3, 4, fan_in)
        real = q + rng.uniform(-0.5, 0.5, fan_in)
        bounds = (np.floor(real) - q, np.ceil(real) - q)
        out.append(NeuronProblem(a, 0.05 * a @ real, q, 0.05, 0.0, qmin=-3, qmax=3,
                                 fit_bias=False, max_rows=rows, delta_bounds=bounds))
    return out


def one_by_one(items, workers: int):
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(solve_one, items))


def chunked(items, workers: int):
    chunk = max(1, -(-len(items) // (4 * workers)))
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(solve_one, items, chunksize=chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=64)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--fan-in", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    items = problems(args.neurons, args.rows, args.fan_in)
    print(f"{args.neurons} LPs of {args.rows} x {args.fan_in}, {args.workers} workers, load "
          f"{os.getloadavg()[0]:.2f}")
    for _ in range(args.repeats):
        for name, run in (("one by one", lambda: one_by_one(items, args.workers)),
                          ("chunked", lambda: chunked(items, args.workers))):
            start = time.perf_counter()
            results = run()
            print(f"  {name:<10} {time.perf_counter() - start:6.2f} s "
                  f"(solve {sum(r.solve_seconds for r in results):.2f} s summed)", flush=True)


if __name__ == "__main__":
    main()
