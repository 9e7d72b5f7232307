"""Handing freed heap memory back between the phases of a repair."""

import platform

import pytest

from qnnrepair.memory import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_finds_malloc_trim_on_glibc():
    assert release_free_memory() is True
