"""Shared set-up of the benchmarks: the checkpoint, the splits, machine notes, result files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SHARED = ROOT.parent / "shared"


def weights_path(model: str, shared: Path) -> Path:
    """The CIFAR-10 float weights of a zoo model: shared/models (ResNet-20/32) or the project's
    models/ folder (the models trained here, see models/README.md)."""
    for path in (shared / "models" / f"cifar10-{model}.th",
                 ROOT / "models" / f"cifar10-{model}.pt"):
        if path.exists():
            return path
    raise SystemExit(f"no CIFAR-10 weights for {model} in {shared / 'models'} or "
                     f"{ROOT / 'models'}")


def workload(model: str, shared: Path, n_repair: int = 1000, n_validation: int = 1000,
             seed: int = 0, n_test: int | None = None):
    """A CIFAR-10 checkpoint (see weights_path); R and V from the 30k training images, T the
    10,000 test images (or their first n_test)."""
    from qnnrepair.pipeline import prepare

    return prepare(model, weights_path(model, shared),
                   shared / "data" / "cifar10" / "train30k.npz",
                   shared / "data" / "cifar10" / "test.npz", n_repair=n_repair,
                   n_validation=n_validation, n_test=n_test, seed=seed)


def machine() -> str:
    from qnnrepair.report import machine as describe

    return f"{describe()} ({git_revision()})"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def command() -> str:
    return "python " + shlex.join([str(Path(sys.argv[0]).relative_to(ROOT))
                                 if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                 *sys.argv[1:]])


class Rows:
    """Result rows kept in a JSON file, so an interrupted benchmark resumes where it stopped."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.rows: list[dict] = [] if fresh or not path.exists() else \
            json.loads(path.read_text())["rows"]

    def has(self, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows)

    def get(self, **key) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict, meta: dict) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=1))
        tmp.replace(self.path)


def _cpu_seconds() -> float:
    t = os.times()  # children: the LP worker processes, once their pool has closed
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    """Wall seconds and CPU seconds (all threads, and finished worker processes) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu_seconds() - self.cpu
