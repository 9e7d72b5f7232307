"""Handing freed heap memory back between the phases of a repair."""

import platform

import pytest

from qnnrepair.memory import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_finds_malloc_trim_on_glibc():
    assert release_free_memory() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_sets_glibc_thresholds_and_allocation_still_works():
    import torch

    from qnnrepair.memory import keep_freed_memory

    assert keep_freed_memory() is True
    big = torch.ones(64, 1024, 1024)  # 256 MiB: from the heap now, freed back to it
    assert float(big.sum()) == 64 * 1024 * 1024
    del big
    assert release_free_memory() is True
