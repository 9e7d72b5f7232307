"""How the process's C heap holds memory: given back between the phases of a repair, kept for
reuse within a phase.

glibc keeps freed heap memory for reuse: after gradient blame that is about a gigabyte of
mid-sized activation buffers on MobileNetV2. A candidate's one-batch forward pass then
allocates its large activations directly from the system (above glibc's mmap threshold), so it
cannot reuse them, and the process's peak would hold both. `release_free_memory()` hands the
freed heap back (malloc_trim); where the C library has no malloc_trim it does nothing.

Within a phase the opposite helps: every forward pass of an ImageNet batch allocates
activations of tens of megabytes, above glibc's mmap threshold, so each one is mapped fresh
from the system and its pages faulted in again (a third of the integer simulation's time on
MobileNetV2). `keep_freed_memory()` raises the mmap and trim thresholds to KEPT_BYTES, so
those buffers are reused from the heap and at most that much freed memory stays held;
release_free_memory() still hands it back between phases. It changes
the whole process, so the library never calls it: the CLI does, at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters, and the size up to which freed buffers stay in the heap: a
# forward pass of ten ImageNet images reuses about 200 MB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_BYTES = 256 << 20


@functools.cache
def _libc_function(name: str):
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    return _libc_function("malloc_trim")


def keep_freed_memory() -> bool:
    """Serve large buffers from the heap and keep freed ones there for reuse (see the module
    docstring); False where the C library has no mallopt."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES) and mallopt(_M_MMAP_THRESHOLD, KEPT_BYTES))


def release_free_memory() -> bool:
    """Return freed heap memory to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
