"""Integer arithmetic that every deployed-format simulation relies on."""

from __future__ import annotations


def exact_in_float32(bound: float) -> bool:
    """True when every partial sum of an accumulation bounded by `bound` is an integer that
    float32 holds exactly (below 2^24), so a float32 convolution is an integer one."""
    return bound < 2**24
