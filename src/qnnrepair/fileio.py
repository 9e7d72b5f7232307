"""Output files appear whole or not at all: write to a temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qnnrepair.errors import QnnRepairError


def check_output_folder(path: str | os.PathLike) -> Path:
    """The folder `path` will be written in, after checking it can be: before long work."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise QnnRepairError(f"output folder {folder} is a file, not a folder: choose another path")
    if not folder.is_dir():
        raise QnnRepairError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise QnnRepairError(f"output folder {folder} is not writable: choose another path")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    folder = check_output_folder(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
