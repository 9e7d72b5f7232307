"""Giving freed memory back to the system between the phases of a repair.

glibc keeps freed heap memory for reuse: after gradient blame that is about a gigabyte of
mid-sized activation buffers on MobileNetV2. A candidate's one-batch forward pass then
allocates its large activations directly from the system (above glibc's mmap threshold), so it
cannot reuse them, and the process's peak would hold both. `release_free_memory()` hands the
freed heap back (malloc_trim); where the C library has no malloc_trim it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return freed heap memory to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
