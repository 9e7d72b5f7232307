"""The LP backend on a Ray cluster (docs/DESIGN.md, section 7):
``make_backend("ray", n_workers=4)``.

Where: the ``address`` option, else the RAY_ADDRESS environment variable, else a local Ray started
here with ``num_cpus = n_workers`` (shut down by :meth:`RayPool.close`). A process that already
called ``ray.init`` is used as it is. Ray is an optional extra: ``pip install 'qnnrepair[ray]'``;
the workers of a cluster need qnnrepair installed too (they unpickle its problem classes).

How: the whole problem list goes into the object store once (``ray.put``: the row matrix that
the neurons of one layer share is stored once, see :func:`share_equal_arrays`, and each node
fetches the list once), and each task carries only that reference and the bounds of its slice.
A task solves its slice in order and returns the results pickled, as a process pool would, so
the caller gets ordinary writable arrays, in input order. LP solves are single-threaded
deterministic HiGHS: the results do not depend on the cluster, the number of workers or the
batching (only ``solve_seconds`` does).

Batches (benchmarks/results/scaling.md, 2-core machine): an empty task costs about 2 ms one at
a time and 0.4-0.8 ms each with many in flight; the task here, which also unpickles the call's
problem list (80 LPs, arrays zero-copy), 4-8 ms and 1.3-2.2 ms. One "match" LP of ResNet-20
takes 5 ms (144 weights) to 14 ms (576). MIN_BATCH LPs per task keep the overhead near a tenth
of a task of the fastest LPs and a few percent for typical batches (on that LP set Ray on one
2-CPU node solves 159 LPs/s, the 2-process local pool 145), TASKS_PER_SLOT tasks per worker
keep the workers evenly loaded when LP times vary, and MAX_BATCH bounds what a retry solves
again.

Faults: a task whose worker or node dies is run again up to ``max_retries`` times (Ray's task
retries; an LP has no side effects, so re-solving it is safe). Past that, or when the cluster
cannot be reached, :meth:`RayPool.solve` raises a one-line QnnRepairError and returns nothing:
the repair stops before anything is written. An error raised by a problem itself (bad input)
is not retried and reaches the caller as it was raised, as with the local pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import pickle
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np

from qnnrepair.errors import QnnRepairError
from qnnrepair.repair.lp.backend import register_backend
from qnnrepair.repair.lp.formulation import LPProblem
from qnnrepair.repair.lp.result import LPResult

logger = logging.getLogger(__name__)

MIN_BATCH = 4
MAX_BATCH = 32
TASKS_PER_SLOT = 4
CONNECT_TIMEOUT_S = 30.0


def batch_bounds(n_problems: int, n_slots: int, batch_size: int | None = None
                 ) -> list[tuple[int, int]]:
    """[start, stop) of each task's slice: `batch_size` problems each, or when None about
    TASKS_PER_SLOT tasks per slot, between MIN_BATCH and MAX_BATCH problems (fewer than
    MIN_BATCH when that is what it takes to give every slot some work)."""
    if batch_size is None:
        per_task = math.ceil(n_problems / (TASKS_PER_SLOT * max(n_slots, 1)))
        floor = min(MIN_BATCH, math.ceil(n_problems / max(n_slots, 1)))
        batch_size = min(MAX_BATCH, max(floor, per_task))
    batch_size = max(1, batch_size)
    return [(i, min(i + batch_size, n_problems)) for i in range(0, n_problems, batch_size)]


def share_equal_arrays(problems: Sequence[LPProblem], min_bytes: int = 4096
                       ) -> list[LPProblem]:
    """The problems, with array fields of equal bytes (dtype, shape, contents) made one object,
    so that pickling (ray.put) stores each once; every value stays exactly what it was.

    The neurons of one layer share their LP rows (a "match" summary), but each problem may hold
    its own copy of them (256 x J doubles, most of a problem's bytes): without this, the object
    every node fetches would carry the rows once per neuron.
    """
    seen: dict[tuple, np.ndarray] = {}
    shared = []
    for problem in problems:
        if not dataclasses.is_dataclass(problem):
            shared.append(problem)
            continue
        changes = {}
        for f in dataclasses.fields(problem):
            value = getattr(problem, f.name)
            if not isinstance(value, np.ndarray) or value.nbytes < min_bytes:
                continue
            data = memoryview(np.ascontiguousarray(value)).cast("B")
            key = (value.dtype.str, value.shape,
                   hashlib.blake2b(data, digest_size=16).digest())
            first = seen.setdefault(key, value)
            if first is not value and memoryview(np.ascontiguousarray(first)).cast("B") == data:
                changes[f.name] = first
        shared.append(dataclasses.replace(problem, **changes) if changes else problem)
    return shared


def solve_slice(problems: Sequence[LPProblem], start: int, stop: int) -> bytes:
    """What one Ray task runs: problems[start:stop], solved in order, pickled."""
    return pickle.dumps([problems[i].solve() for i in range(start, stop)],
                        protocol=pickle.HIGHEST_PROTOCOL)


@register_backend("ray")
class RayPool:
    """Solves LPs as Ray tasks, `batch_size` LPs per task (None: chosen per call, see
    :func:`batch_bounds`).

    Args:
        n_workers: CPUs of the local Ray this backend starts when no cluster is given; also the
            parallelism assumed when sizing batches if the cluster's CPU count is unknown.
        address: a running cluster ("host:port", "ray://host:port" or "auto"); None: the
            RAY_ADDRESS environment variable, else a local Ray.
        max_retries: how many times a task whose worker died is run again.
        connect_timeout_s: how long to wait for the cluster's address to answer, and then for
            Ray to join it.
    """

    def __init__(self, n_workers: int = 2, address: str | None = None,
                 batch_size: int | None = None, max_retries: int = 3,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if n_workers < 1:
            raise QnnRepairError(f"n_workers must be at least 1, got {n_workers}")
        if batch_size is not None and batch_size < 1:
            raise QnnRepairError(f"batch_size must be at least 1, got {batch_size}")
        if max_retries < 0:
            raise QnnRepairError(f"max_retries must be at least 0, got {max_retries}")
        self.n_workers, self.batch_size, self.max_retries = n_workers, batch_size, max_retries
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.connect_timeout_s = connect_timeout_s
        self._started = False  # whether this backend started (and so may shut down) Ray
        self._remote = None
        self.stats_: dict[str, float] = {"tasks": 0, "put_bytes": 0, "put_seconds": 0.0}

    def __repr__(self) -> str:
        where = self.address or f"local Ray, {self.n_workers} CPUs"
        return f"RayPool({where}, batch_size={self.batch_size}, max_retries={self.max_retries})"

    def solve(self, problems: Sequence[LPProblem]) -> list[LPResult]:
        problems = list(problems)
        if not problems:
            return []
        ray = self._connect()
        start = time.perf_counter()
        try:  # one object for the whole list: arrays the problems share are stored once
            ref = ray.put(share_equal_arrays(problems))
        except ray.exceptions.RayError as err:  # e.g. the object store is full
            raise QnnRepairError(f"Ray could not store the {len(problems)} LPs: "
                                 f"{_first_line(err)}") from None
        self.stats_["put_seconds"] += time.perf_counter() - start
        self.stats_["put_bytes"] += _object_size(ray, ref)
        bounds = batch_bounds(len(problems), self._slots(ray), self.batch_size)
        tasks = [self._remote.remote(ref, lo, hi) for lo, hi in bounds]
        self.stats_["tasks"] += len(tasks)
        # When a task fails, the others are left to finish (a slice of LPs takes seconds) and
        # their results dropped, not cancelled: in Ray 2.60 a cancel that races a task's
        # completion aborts the driver process (task_manager.cc "Tried to complete task that
        # was not pending"; ray-project/ray#54798 fixed one such race). It killed a whole test
        # run twice in this project.
        try:
            chunks = ray.get(tasks)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
                raise cause from None
            raise QnnRepairError(f"a Ray LP task failed: {_first_line(err)}") from None
        except ray.exceptions.RayError as err:
            raise QnnRepairError(
                f"a Ray LP task failed after {self.max_retries} retries "
                f"({type(err).__name__}: {_first_line(err)}); the repair stopped and wrote "
                "nothing: check the cluster's workers (ray status) and run it again") from None
        finally:
            del ref
        return [result for chunk in chunks for result in pickle.loads(chunk)]

    def close(self) -> None:
        """Shut down the local Ray this backend started (a cluster it joined keeps running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._remote = None

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ connection

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise QnnRepairError("the 'ray' LP backend needs Ray: pip install 'qnnrepair[ray]' "
                                 "(or use the 'local' backend)") from None
        if not ray.is_initialized():
            if self.address:
                self._join(ray)
            else:
                try:
                    ray.init(num_cpus=self.n_workers, include_dashboard=False,
                             configure_logging=False, log_to_driver=False)
                except Exception as err:  # no shared memory, no free port, ...
                    raise QnnRepairError(f"could not start a local Ray with {self.n_workers} "
                                         f"CPUs: {_first_line(err)}") from None
                self._started = True
                logger.info("started a local Ray with %d CPUs", self.n_workers)
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries,
                                      retry_exceptions=False)(solve_slice)
        return ray

    def _join(self, ray) -> None:
        address = self.address
        if address != "auto":  # "auto" finds a cluster started on this machine
            _check_reachable(address, self.connect_timeout_s)
        # Ray retries for minutes when something else answers at the address (or the head is
        # half up): give it connect_timeout_s in a thread of its own, then give up.
        outcome: dict[str, BaseException | bool] = {}

        def init() -> None:
            try:
                ray.init(address=address, configure_logging=False, log_to_driver=False)
                outcome["joined"] = True
            except BaseException as err:  # handed to the caller's thread below
                outcome["error"] = err

        thread = threading.Thread(target=init, name="qnnrepair-ray-init", daemon=True)
        thread.start()
        thread.join(self.connect_timeout_s)
        if thread.is_alive():
            raise QnnRepairError(f"cannot connect to the Ray cluster at {address}: no Ray answer "
                                 f"within {self.connect_timeout_s:g} s (is it a Ray head's GCS "
                                 "port, 6379 by default, or a ray:// client port?)")
        if "error" in outcome:
            raise QnnRepairError(f"cannot connect to the Ray cluster at {address}: "
                                 f"{_first_line(outcome['error'])}") from None
        logger.info("joined the Ray cluster at %s", address)

    def _slots(self, ray) -> int:
        """Tasks that can run at once: the cluster's CPUs (n_workers if it does not say)."""
        return max(1, int(ray.cluster_resources().get("CPU", self.n_workers)))


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds, not minutes, when nothing listens at `address` (Ray itself retries
    for minutes)."""
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise QnnRepairError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, "
                             "ray://10.0.0.5:10001 or auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) \
            else (err.strerror or str(err))
        raise QnnRepairError(f"cannot reach the Ray cluster at {address}: {reason}; start it "
                             "(ray start --head) or give the right --ray-address / RAY_ADDRESS"
                             ) from None


def _object_size(ray, ref) -> int:
    """Bytes of a stored object, 0 when this Ray does not say."""
    try:
        from ray.experimental import get_object_locations

        return int(get_object_locations([ref])[ref].get("object_size") or 0)
    except Exception:  # an optional statistic; Ray's experimental API may move
        return 0


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an error's message, at most `limit` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
