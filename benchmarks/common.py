"""Shared set-up of the benchmarks: the checkpoint, the splits, machine notes, result files."""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
from pathlib import Path

from qnnrepair.bench.record import Rows  # noqa: F401 (the scripts' row store)
from qnnrepair.bench.run import Clock  # noqa: F401 (the scripts' clock)

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
    """A CIFAR-10 checkpoint (see weights_path); R from the 30k training images, V 1,000 images
    drawn from the 10,000 test images and T the other 9,000 (or n_test of them)."""
    from qnnrepair.pipeline import prepare

    return prepare(model, weights_path(model, shared),
                   shared / "data" / "cifar10" / "train30k.npz",
                   shared / "data" / "cifar10" / "test.npz", n_repair=n_repair,
                   n_validation=n_validation, n_test=n_test, seed=seed)


def machine() -> str:
    from qnnrepair.report import machine as describe

    return f"{describe()} ({git_revision()})"


@functools.cache
def git_revision() -> str:
    """The revision checked out when the process first asks: the code it imported then, even
    if a commit lands while it runs."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def command() -> str:
    return "python " + shlex.join([str(Path(sys.argv[0]).relative_to(ROOT))
                                 if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                 *sys.argv[1:]])


